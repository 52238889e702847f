"""The admission gate when the usage ledger fails: the request is refused with 503 and a
retry delay in bounded time (never a raw error, never a hang), its lease is given back,
and the gate admits again once the database answers. A fake admission controller grants
at once; the ledger is a real SQLite file behind the real writer, or a writer that hangs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time

import grpc
import pytest

from routers import Admission, Rejection, RejectionReason, Route, Tenant, TenantClass
from serving.admission import admission_gate
from serving.admission.admission_controller import Lease
from serving.admission.admission_gate import LEDGER_WAIT_S, AdmissionGate, Visit
from serving.admission.refusals import STATUS_BY_REASON, Refused
from serving.config.home import default_ledger_url
from serving.frontdoor.errors import refusal_response
from serving.frontdoor.grpc_status import CODE_BY_REASON
from serving.records.ledger import SQLITE_BUSY_TIMEOUT_S, UsageLedger
from serving.records.ledger_writer import LedgerWriter

SLACK_S = 1.5
ROUTE = Route("government", "m")
ADMISSION = Admission(Tenant("gov", TenantClass.GOVERNMENT, frozenset({"m"})), ROUTE, 0, "salt")


class _Method:
    def __init__(self, call):
        self.remote = call


class FakeController:
    """Grants every lease at once and notes the releases."""

    def __init__(self):
        self.released: list[tuple[str, int]] = []
        self.acquire = _Method(self._acquire)
        self.release = _Method(lambda request_id, used: self.released.append((request_id, used)))

    async def _acquire(self, request_id, *_args):
        return Lease(request_id, 0.0)


class FakeMetrics:
    def __init__(self):
        self.rejections: list[tuple[str, int]] = []

    def observe_rejection(self, _labels, reason: str, status: int) -> None:
        self.rejections.append((reason, status))

    def observe_finished(self, _labels, status: int, **_counts) -> None:
        pass


class HungWriter:
    """A writer whose commit never returns (a server that stopped answering mid-statement)."""

    def __init__(self):
        self.finished: list[tuple[str, str]] = []
        self.timeouts: list[float] = []

    def start(self, _start) -> concurrent.futures.Future:
        return concurrent.futures.Future()

    def finish(self, request_id, end) -> concurrent.futures.Future:
        self.finished.append((request_id, end.reason))
        return concurrent.futures.Future()

    def note_timeout(self, waited_s: float) -> None:
        self.timeouts.append(waited_s)


async def enter(gate: AdmissionGate, request_id: str) -> tuple[Visit | Rejection, float]:
    began = time.monotonic()
    result = await gate.enter(ADMISSION, request_id, 10, 20, "http")
    return result, time.monotonic() - began


def assert_ledger_refusal(rejection) -> None:
    assert isinstance(rejection, Rejection) and rejection.reason is RejectionReason.LEDGER_UNAVAILABLE
    assert rejection.refused_by == "ledger" and "usage ledger is unavailable" in rejection.message
    response = refusal_response(Refused(rejection, "r"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert CODE_BY_REASON[rejection.reason] is grpc.StatusCode.UNAVAILABLE


@pytest.fixture()
def ledger(tmp_path):
    ledger = UsageLedger(default_ledger_url(tmp_path))
    yield ledger
    ledger.close()


def test_a_locked_ledger_is_a_503_within_the_bound_and_the_lease_is_given_back(tmp_path, ledger):
    controller, metrics, writer = FakeController(), FakeMetrics(), LedgerWriter(ledger)
    gate = AdmissionGate(controller, writer, metrics)
    lock = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

    refused, waited_s = asyncio.run(enter(gate, "locked"))
    assert_ledger_refusal(refused)
    assert waited_s <= SQLITE_BUSY_TIMEOUT_S + SLACK_S < LEDGER_WAIT_S + SLACK_S
    assert controller.released == [("locked", 0)]
    assert metrics.rejections == [("ledger_unavailable", 503)]

    lock.execute("ROLLBACK")  # the database is back: the same gate admits, no restart
    admitted, _ = asyncio.run(enter(gate, "back"))
    assert isinstance(admitted, Visit) and controller.released == [("locked", 0)]
    assert [(r.request_id, r.status) for r in ledger.records()] == [("back", "started")]
    gate.close()
    lock.close()


def test_a_hung_ledger_is_a_503_after_the_wait_and_its_record_is_completed(monkeypatch):
    monkeypatch.setattr(admission_gate, "LEDGER_WAIT_S", 0.2)
    controller, metrics, writer = FakeController(), FakeMetrics(), HungWriter()
    gate = AdmissionGate(controller, writer, metrics)
    refused, waited_s = asyncio.run(enter(gate, "hung"))
    assert_ledger_refusal(refused)
    assert 0.2 <= waited_s <= 0.2 + SLACK_S
    assert controller.released == [("hung", 0)] and writer.timeouts == [0.2]
    # The started record may still be written later: the refusal completes it.
    assert writer.finished == [("hung", "ledger_unavailable")]
    assert metrics.rejections == [("ledger_unavailable", 503)]


def test_a_failed_write_of_another_kind_is_a_503_too_not_a_raw_error(ledger):
    controller, metrics, writer = FakeController(), FakeMetrics(), LedgerWriter(ledger)
    gate = AdmissionGate(controller, writer, metrics)
    assert isinstance(asyncio.run(enter(gate, "same-id"))[0], Visit)
    refused, _ = asyncio.run(enter(gate, "same-id"))  # a duplicate id: the database refuses it
    assert_ledger_refusal(refused)
    assert controller.released == [("same-id", 0)]
    gate.close()
    closed, _ = asyncio.run(enter(gate, "after-close"))  # a replica that is stopping
    assert_ledger_refusal(closed)
    # The first request's record is untouched: no refusal completes a record it did not write.
    assert [(r.request_id, r.status) for r in ledger.records()] == [("same-id", "started")]


def test_the_ledger_reason_has_a_status_and_a_grpc_code():
    assert STATUS_BY_REASON[RejectionReason.LEDGER_UNAVAILABLE] == 503
    assert set(STATUS_BY_REASON) == set(CODE_BY_REASON) == set(RejectionReason)
