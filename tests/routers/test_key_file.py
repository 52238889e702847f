"""The key file: atomic 0600 writes, create/revoke, and the watcher's cheap reloads."""

from __future__ import annotations

import json
import os
import stat

import pytest

from routers import Authenticator, KeyFile, KeyFileError, KeyFileWatcher, RejectionReason, Tenancy, Tenant, TenantClass

TENANTS = {"gov", "pilot"}


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_create_writes_a_0600_file_without_secrets(tmp_path):
    keys = KeyFile(tmp_path / "sub" / "keys.json", clock=FakeClock(42))
    key, record = keys.create("gov", TENANTS)
    mode = stat.S_IMODE(os.stat(keys.path).st_mode)
    assert mode == 0o600
    text = keys.path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    assert json.loads(text)["keys"][0]["key_id"] == record.key_id
    assert keys.read().authenticate(key).tenant_id == "gov"
    assert [p.name for p in keys.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_create_refuses_unknown_tenants(tmp_path):
    with pytest.raises(KeyFileError, match="unknown tenant 'nobody'"):
        KeyFile(tmp_path / "keys.json").create("nobody", TENANTS)


def test_revoke_marks_the_record_and_refuses_unknown_ids(tmp_path):
    keys = KeyFile(tmp_path / "keys.json", clock=FakeClock(7))
    key, record = keys.create("pilot", TENANTS)
    assert keys.revoke(record.key_id).revoked_at == 7
    assert keys.read().authenticate(key) is None
    assert [r.is_revoked for r in keys.read().records] == [True]
    with pytest.raises(KeyFileError, match="no key with id"):
        keys.revoke("ffffffffffff")


def test_absent_file_has_no_keys(tmp_path):
    assert KeyFile(tmp_path / "absent.json").read().records == []


@pytest.mark.parametrize("content", ["{", "[]", '{"version": 2, "keys": []}', '{"version": 1, "keys": [{"x": 1}]}'])
def test_malformed_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyFileError, match="keys.json"):
        KeyFile(path).read()


def test_watcher_sees_new_and_revoked_keys_after_the_interval_only(tmp_path):
    clock = FakeClock()
    keys = KeyFile(tmp_path / "keys.json")
    watcher = KeyFileWatcher(keys, check_interval_s=1.0, clock=clock)
    key, record = keys.create("gov", TENANTS)
    assert watcher.current().authenticate(key) is None  # not looked at yet
    clock.now = 1.0
    assert watcher.current().authenticate(key) is not None
    keys.revoke(record.key_id)
    clock.now = 1.5
    assert watcher.current().authenticate(key) is not None  # within the interval
    clock.now = 2.0
    assert watcher.current().authenticate(key) is None


def test_watcher_keeps_the_last_good_keys_when_the_file_breaks(tmp_path):
    clock = FakeClock()
    keys = KeyFile(tmp_path / "keys.json")
    key, _ = keys.create("gov", TENANTS)
    watcher = KeyFileWatcher(keys, clock=clock)
    keys.path.write_text("{ broken")
    clock.now = 5
    assert watcher.current().authenticate(key) is not None


def test_watcher_refuses_a_broken_file_at_start(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("nope")
    with pytest.raises(KeyFileError):
        KeyFileWatcher(KeyFile(path))


TENANCY = Tenancy(tenants={"gov": Tenant("gov", TenantClass.GOVERNMENT, frozenset({"m"}))})


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer  ", "Basic abc", "Bearer fk_000000000000_x"])
def test_authenticator_rejects_missing_malformed_and_unknown_keys(tmp_path, header):
    authenticator = Authenticator(KeyFileWatcher(KeyFile(tmp_path / "k.json")), TENANCY)
    rejection = authenticator.authenticate(header)
    assert rejection.reason is RejectionReason.UNAUTHENTICATED and rejection.refused_by == "api_key"


def test_authenticator_resolves_keys_and_drops_tenants_gone_from_the_config(tmp_path):
    keys = KeyFile(tmp_path / "k.json")
    gov_key, _ = keys.create("gov", TENANTS)
    pilot_key, _ = keys.create("pilot", TENANTS)  # "pilot" is not in TENANCY
    authenticator = Authenticator(KeyFileWatcher(keys), TENANCY)
    assert authenticator.authenticate(f"Bearer {gov_key}").id == "gov"
    assert authenticator.authenticate(f"bearer   {gov_key}  ").id == "gov"
    assert authenticator.authenticate(f"Bearer {pilot_key}").reason is RejectionReason.UNAUTHENTICATED
