"""A locked usage ledger: requests fail closed with 503 in bounded time, then recover by themselves.

Drives the real AdmissionGate, LedgerWriter and SQLite ledger (the admission controller is the
unit tests' fake) with 30 requests spread over 3 s: unlocked, while another connection holds
`BEGIN EXCLUSIVE`, and after it lets go. Prints admitted/refused and time to answer per wave.

Usage: python loadtests/ledger_outage.py
"""
import asyncio, sqlite3, sys, tempfile, time, logging
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
logging.basicConfig(level=logging.INFO, format="  log %(relativeCreated)6.0f ms %(levelname)s %(message)s")
from tests.serving.admission.test_admission_gate import ADMISSION, FakeController, FakeMetrics
from serving.admission.admission_gate import AdmissionGate, Visit
from serving.records.ledger import UsageLedger
from serving.records.ledger_writer import LedgerWriter

async def one(gate, rid):
    t = time.monotonic(); r = await gate.enter(ADMISSION, rid, 1, 1, "http")
    return isinstance(r, Visit), time.monotonic() - t

async def wave(gate, name, n):
    res = []
    for i in range(n):  # arrivals spread over ~3 s
        res.append(asyncio.create_task(one(gate, f"{name}{i}")))
        await asyncio.sleep(3.0 / n)
    res = await asyncio.gather(*res)
    ok = sum(a for a, _ in res); lat = sorted(s for _, s in res)
    print(f"{name}: {n} requests, {ok} admitted, {n-ok} refused 503; time to answer p50 {lat[n//2]:.2f} s, max {lat[-1]:.2f} s")

async def main():
    d = tempfile.mkdtemp()
    ledger = UsageLedger(f"sqlite:///{d}/usage.db")
    controller = FakeController()
    gate = AdmissionGate(controller, LedgerWriter(ledger), FakeMetrics())
    await wave(gate, "unlocked", 30)
    lock = sqlite3.connect(f"{d}/usage.db", isolation_level=None); lock.execute("BEGIN EXCLUSIVE")
    await wave(gate, "locked", 30)
    lock.execute("ROLLBACK")
    await wave(gate, "released", 30)
    print("leases given back:", len(controller.released))
asyncio.run(main())
