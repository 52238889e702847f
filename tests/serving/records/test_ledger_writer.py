"""Group commit: writes that arrive while the writer commits share the next transaction,
each one's future resolves once it is durable, and one bad write fails only itself."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from serving.config.home import default_ledger_url
from serving.records.ledger import OK, REJECTED, RequestEnd, UsageLedger
from serving.records.ledger_writer import LedgerWriter
from tests.serving.records.test_ledger import start


class CountingLedger(UsageLedger):
    """A real SQLite ledger that counts its transactions, and can hold the first one."""

    def __init__(self, url: str):
        super().__init__(url)
        self.batches: list[int] = []
        self.first_may_commit = threading.Event()
        self.first_is_committing = threading.Event()

    def write(self, writes) -> None:
        if not self.batches:
            self.first_is_committing.set()
            assert self.first_may_commit.wait(10)
        self.batches.append(len(writes))
        super().write(writes)


@pytest.fixture()
def ledger(tmp_path):
    ledger = CountingLedger(default_ledger_url(tmp_path))
    yield ledger
    ledger.close()


def test_writes_arriving_during_a_commit_share_the_next_one(ledger):
    writer = LedgerWriter(ledger)
    first = writer.start(start("a"))
    assert ledger.first_is_committing.wait(10)
    # While "a" commits: its end, two refusals and another start queue up.
    later = [writer.finish("a", RequestEnd(OK, 200, prompt_tokens=3, completion_tokens=4)),
             writer.record(start("b", "pilot"), RequestEnd(REJECTED, 503, reason="pool_saturated")),
             writer.record(start("c", "pilot"), RequestEnd(REJECTED, 503, reason="pool_saturated")),
             writer.start(start("d"))]
    assert not any(future.done() for future in later)
    ledger.first_may_commit.set()
    concurrent.futures.wait([first, *later], timeout=10)
    assert all(future.result() is None for future in [first, *later])
    assert ledger.batches == [1, 4]
    records = {r.request_id: r for r in ledger.records()}
    assert (records["a"].status, records["a"].completion_tokens) == (OK, 4)
    assert records["b"].status_code == 503 and records["d"].status == "started"
    writer.close()


def test_a_bad_write_fails_alone(ledger):
    writer = LedgerWriter(ledger)
    writer.start(start("held"))
    assert ledger.first_is_committing.wait(10)
    duplicate, fine = writer.start(start("held")), writer.start(start("other"))
    ledger.first_may_commit.set()
    with pytest.raises(Exception, match="UNIQUE"):
        duplicate.result(10)
    assert fine.result(10) is None
    assert sorted(r.request_id for r in ledger.records()) == ["held", "other"]
    writer.close()


def test_a_cancelled_wait_still_writes_and_close_flushes(ledger):
    writer = LedgerWriter(ledger)
    writer.start(start("w"))
    assert ledger.first_is_committing.wait(10)
    gave_up = writer.start(start("x"))
    assert gave_up.cancel()  # the request was cancelled while its record was queued
    finished = writer.finish("x", RequestEnd(OK, 200))
    ledger.first_may_commit.set()
    writer.close()
    assert gave_up.cancelled() and finished.done() and finished.result() is None
    assert [r.status for r in ledger.records()] == ["started", OK]
    with pytest.raises(RuntimeError, match="closed"):
        writer.start(start("late")).result(1)
