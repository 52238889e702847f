"""The usage ledger when its database does not take writes: locked by another process, full,
read-only, unreachable. A started record fails within a bound (its request is refused), the
ends of requests are kept and retried, the writer logs the outage once and recovers by
itself, and nothing it logs or raises carries a statement or its parameters."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time

import pytest
from sqlalchemy import event

from serving.config.home import default_ledger_url
from serving.records.ledger import (CONNECT_TIMEOUT_S, OK, SQLITE_BUSY_TIMEOUT_S, LedgerUnavailable,
                                    RequestEnd, UsageLedger, _connect_args)
from serving.records.ledger_writer import LedgerWriter
from tests.serving.records.test_ledger import start

# Scheduling slack on a loaded 2-core CI machine.
SLACK_S = 1.5


class Constraints:
    """Puts the ledger's own connections under SQLite limits each time one is checked out:
    a disk that is full (no page beyond those in use) or a file that is read-only."""

    def __init__(self, ledger: UsageLedger):
        self.is_full = self.is_read_only = False
        event.listen(ledger._engine, "checkout", self._apply)

    def _apply(self, connection, _record, _proxy) -> None:
        num_pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count={num_pages if self.is_full else 2**30}")
        connection.execute(f"PRAGMA query_only={int(self.is_read_only)}")


@pytest.fixture()
def ledger(tmp_path):
    ledger = UsageLedger(default_ledger_url(tmp_path))
    yield ledger
    ledger.close()


@pytest.fixture()
def lock(tmp_path, ledger):
    """Another process's connection to the same file (opened after the ledger made it)."""
    connection = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    yield connection
    connection.close()


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_names_no_statement(error: BaseException) -> None:
    for leak in ("INSERT", "UPDATE", "[SQL", "parameters", "gov"):  # "gov": a tenant id
        assert leak not in str(error), str(error)


def test_a_locked_database_fails_a_started_record_in_bounded_time_and_recovers(ledger, lock, caplog):
    writer = LedgerWriter(ledger, retry_interval_s=0.05)
    assert writer.start(start("before")).result(10) is None
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    began = time.monotonic()
    refused = writer.start(start("a"))
    ended = writer.finish("before", RequestEnd(OK, 200, completion_tokens=7))
    with pytest.raises(LedgerUnavailable, match="database is locked") as raised:
        refused.result(SQLITE_BUSY_TIMEOUT_S + SLACK_S)
    waited_s = time.monotonic() - began
    assert SQLITE_BUSY_TIMEOUT_S * 0.9 <= waited_s <= SQLITE_BUSY_TIMEOUT_S + SLACK_S
    assert_names_no_statement(raised.value)
    with pytest.raises(LedgerUnavailable):  # more requests in the same outage
        writer.start(start("b")).result(2 * SQLITE_BUSY_TIMEOUT_S + SLACK_S)
    assert not ended.done() and writer.num_kept == 1 and not writer.is_available
    lock.execute("ROLLBACK")  # the lock is released: no restart, the next writes go through
    assert writer.start(start("after")).result(2 * SQLITE_BUSY_TIMEOUT_S + SLACK_S) is None
    assert ended.result(10) is None and writer.is_available and writer.num_kept == 0
    records = {r.request_id: r for r in ledger.records()}
    assert sorted(records) == ["after", "before"] and records["before"].completion_tokens == 7
    outage = [r for r in caplog.records if r.name == "fabriek.ledger"]
    assert [r.levelno for r in outage] == [logging.ERROR, logging.WARNING]  # once, then recovery
    assert "database is locked" in outage[0].getMessage() and "available again" in outage[1].getMessage()
    writer.close()


def test_a_full_disk_fails_started_records_keeps_ends_and_recovers(ledger):
    constraints = Constraints(ledger)
    writer = LedgerWriter(ledger, retry_interval_s=0.05)
    assert writer.start(start("running")).result(10) is None
    constraints.is_full = True
    failures = []
    for i in range(500):  # until the pages in use are full
        try:
            writer.start(start(f"r{i}")).result(10)
        except LedgerUnavailable as error:
            failures.append(error)
    assert failures and "database or disk is full" in str(failures[-1])
    ended = writer.finish("running", RequestEnd(OK, 200))
    refusal = writer.record(start("refused"), RequestEnd("rejected", 429, reason="quota_exceeded"))
    wait_until(lambda: writer.num_kept == 2)
    constraints.is_full = False  # space again: the kept writes go in with the next retry
    assert ended.result(10) is None and refusal.result(10) is None
    records = {r.request_id: r for r in ledger.records()}
    assert records["running"].status == OK and records["refused"].status_code == 429
    writer.close()


def test_a_read_only_database_keeps_ends_until_they_are_given_up_by_request_id(ledger, caplog):
    constraints = Constraints(ledger)
    writer = LedgerWriter(ledger, retry_interval_s=0.05, give_up_after_s=0.5)
    assert writer.start(start("x")).result(10) is None
    constraints.is_read_only = True
    with pytest.raises(LedgerUnavailable, match="readonly"):
        writer.start(start("y")).result(10)
    ended = writer.finish("x", RequestEnd(OK, 200))
    with pytest.raises(LedgerUnavailable, match="usage record of x not written") as raised:
        ended.result(10)
    assert_names_no_statement(raised.value)
    assert writer.num_kept == 0
    assert any("gave up 1 writes" in r.getMessage() for r in caplog.records)
    constraints.is_read_only = False  # the thread outlived all of it
    assert writer.start(start("z")).result(10) is None
    writer.close()


def test_at_most_max_kept_ends_are_kept_oldest_given_up_first(ledger):
    constraints = Constraints(ledger)
    writer = LedgerWriter(ledger, retry_interval_s=0.05, max_kept=2)
    constraints.is_read_only = True
    ends = [writer.finish(f"e{i}", RequestEnd(OK, 200)) for i in range(3)]
    with pytest.raises(LedgerUnavailable, match="e0"):
        ends[0].result(10)
    constraints.is_read_only = False
    assert [f.result(10) for f in ends[1:]] == [None, None]
    writer.close()


def test_closing_while_unavailable_fails_the_kept_writes_and_stops(ledger, lock):
    writer = LedgerWriter(ledger, retry_interval_s=0.05)
    lock.execute("BEGIN EXCLUSIVE")
    ended = writer.finish("a", RequestEnd(OK, 200))
    wait_until(lambda: writer.num_kept == 1)
    began = time.monotonic()
    writer.close()
    assert time.monotonic() - began <= 2 * SQLITE_BUSY_TIMEOUT_S + SLACK_S
    with pytest.raises(LedgerUnavailable, match="usage record of a"):
        ended.result(0)
    lock.execute("ROLLBACK")


def test_a_waiter_timeout_is_logged_once_and_cleared_by_the_next_commit(ledger, caplog):
    writer = LedgerWriter(ledger)
    writer.note_timeout(5.0)
    writer.note_timeout(5.0)
    assert not writer.is_available
    assert writer.start(start("a")).result(10) is None and writer.is_available
    messages = [r.getMessage() for r in caplog.records if r.name == "fabriek.ledger"]
    assert len(messages) == 2 and "within 5 s" in messages[0] and "available again" in messages[1]
    writer.close()


def test_each_connection_is_bounded():
    assert _connect_args("sqlite:////tmp/usage.db") == {"timeout": SQLITE_BUSY_TIMEOUT_S}
    assert _connect_args("postgresql+psycopg://u@db/usage") == {"connect_timeout": CONNECT_TIMEOUT_S}
    assert _connect_args("postgresql://u@db/usage") == {"connect_timeout": CONNECT_TIMEOUT_S}


def test_an_unreachable_server_fails_at_once():
    pytest.importorskip("psycopg", reason="the [postgres] extra is not installed")
    began = time.monotonic()
    with pytest.raises(Exception, match="127.0.0.1"):
        UsageLedger("postgresql+psycopg://fabriek@127.0.0.1:1/usage")
    assert time.monotonic() - began <= CONNECT_TIMEOUT_S + SLACK_S


def test_a_removed_database_directory_fails_writes_and_recovers(tmp_path):
    # A new connection cannot open the file; the writer keeps going and recovers when the
    # directory is back (with its file: a fresh file would lack the table).
    home = tmp_path / "domain"
    ledger = UsageLedger(default_ledger_url(home))
    writer = LedgerWriter(ledger, retry_interval_s=0.05)
    assert writer.start(start("a")).result(10) is None
    ledger._engine.dispose()  # as after a dropped connection
    shutil.move(home, tmp_path / "away")
    home.write_text("not a directory")
    with pytest.raises(LedgerUnavailable, match="unable to open"):
        writer.start(start("b")).result(10)
    ended = writer.finish("a", RequestEnd(OK, 200))
    wait_until(lambda: writer.num_kept == 1)
    home.unlink()
    shutil.move(tmp_path / "away", home)
    assert ended.result(10) is None
    assert [r.status for r in ledger.records()] == [OK]
    writer.close()
    ledger.close()


class SplitThenLocked:
    """A ledger stand-in: the first write waits (so the next ones form one batch), that batch
    fails as a bad write would, and every single write after it finds the database locked."""

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.may_commit = threading.Event()

    def write(self, writes) -> None:
        self.batch_sizes.append(len(writes))
        if len(self.batch_sizes) == 1:
            assert self.may_commit.wait(10)
        elif len(writes) > 1:
            raise ValueError("one bad write")
        else:
            raise LedgerUnavailable("OperationalError: database is locked")


def test_a_batch_split_after_a_bad_write_stops_at_the_first_locked_one():
    # Else each write of a 512-write batch would wait out its own busy timeout.
    ledger = SplitThenLocked()
    writer = LedgerWriter(ledger)
    writer.start(start("first"))
    wait_until(lambda: ledger.batch_sizes == [1])
    starts = [writer.start(start(f"s{i}")) for i in range(5)]
    ledger.may_commit.set()
    for future in starts:
        with pytest.raises(LedgerUnavailable, match="locked"):
            future.result(10)
    assert ledger.batch_sizes == [1, 5, 1]
    writer.close()
