"""The usage ledger on SQLite: records, one write for refusals, totals, interrupted requests."""

from __future__ import annotations

from serving.config.home import default_ledger_url
from serving.records.ledger import INTERRUPTED_AFTER_S, OK, REJECTED, RequestEnd, RequestStart, UsageLedger


def start(request_id: str, tenant: str = "gov") -> RequestStart:
    return RequestStart(request_id, tenant, "government", "government", "m", "http", reserved_tokens=100)


def test_records_and_totals(tmp_path):
    ledger = UsageLedger(default_ledger_url(tmp_path))
    ledger.start(start("a"), now=1000.0)
    ledger.finish("a", RequestEnd(OK, 200, prompt_tokens=10, completion_tokens=20, latency_ms=5.0), now=1001.0)
    ledger.record(start("b", "pilot"), RequestEnd(REJECTED, 429, reason="quota_exceeded"))
    ledger.start(start("c"), now=1000.0)  # cut off: never finished
    records = {r.request_id: r for r in ledger.records()}
    assert (records["a"].status, records["a"].completion_tokens, records["a"].finished_at) == (OK, 20, 1001.0)
    assert (records["b"].status, records["b"].status_code, records["b"].reason) == (REJECTED, 429, "quota_exceeded")
    assert records["c"].status == "started" and records["c"].finished_at is None
    totals = {(r["tenant_id"], r["status"]): r for r in ledger.totals(now=1000.0 + INTERRUPTED_AFTER_S + 1)}
    assert totals[("gov", OK)]["prompt_tokens"] == 10
    assert totals[("gov", "interrupted")]["requests"] == 1
    assert [r["status"] for r in ledger.totals(tenant_id="gov", now=1001.0)] == ["in progress", OK]
    ledger.close()


def test_two_ledgers_share_one_file(tmp_path):
    # Two ingress replicas write the same SQLite file (WAL mode).
    first, second = UsageLedger(default_ledger_url(tmp_path)), UsageLedger(default_ledger_url(tmp_path))
    first.record(start("x"), RequestEnd(OK, 200))
    second.record(start("y"), RequestEnd(OK, 200))
    assert {r.request_id for r in first.records()} == {"x", "y"}
    first.close()
    second.close()
