"""The SQLite usage ledger names tenants and their usage: its files are 0600, in
directories fabriek creates 0700."""

from __future__ import annotations

import os
import stat

from serving.records.ledger import OK, RequestEnd, RequestStart, UsageLedger


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ledger_database_wal_and_shm_are_0600_in_new_0700_directories(tmp_path):
    path = tmp_path / "domains" / "government" / "usage.db"
    old_umask = os.umask(0o022)  # the common default, which would give 0644 and 0755
    try:
        ledger = UsageLedger(f"sqlite:///{path}")
        ledger.record(RequestStart("r1", "gov-demo", "government", "government", "m", "http"),
                      RequestEnd(OK, 200, prompt_tokens=3, completion_tokens=4))
        # Written through WAL: the -wal and -shm files exist while the ledger is open.
        files = {p.name: _mode(p) for p in path.parent.iterdir()}
        ledger.close()
    finally:
        os.umask(old_umask)
    assert files == {"usage.db": 0o600, "usage.db-wal": 0o600, "usage.db-shm": 0o600}
    assert _mode(tmp_path / "domains") == _mode(path.parent) == 0o700


def test_an_existing_ledger_keeps_its_records_and_mode(tmp_path):
    path = tmp_path / "usage.db"
    first = UsageLedger(f"sqlite:///{path}")
    first.record(RequestStart("r1", "gov-demo", "government", "government", "m", "http"), RequestEnd(OK, 200))
    first.close()
    os.chmod(path, 0o640)  # an operator's choice (a backup group), kept
    again = UsageLedger(f"sqlite:///{path}")
    assert [r.request_id for r in again.records()] == ["r1"]
    again.close()
    assert _mode(path) == 0o640


def test_an_in_memory_ledger_creates_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    UsageLedger("sqlite:///:memory:").close()
    assert list(tmp_path.iterdir()) == []
