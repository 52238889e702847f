"""Wrong secrets for a real key id cannot be used to burn the front door's CPU: past the limit
the key id is refused without hashing, and a key that already verified is not affected."""

from __future__ import annotations

import pytest

import routers.api_keys as api_keys
from routers import Authenticator, KeyFile, KeyFileWatcher, RejectionReason, Tenancy, Tenant, TenantClass
from routers.authentication import KeyFailureLimit, PendingCheck

TENANCY = Tenancy(tenants={"gov": Tenant("gov", TenantClass.GOVERNMENT, frozenset({"m"}))})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hashes(monkeypatch):
    """Counts scrypt hashes."""
    counted = []
    real = api_keys._hash

    def counting(*args, **kwargs):
        counted.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(api_keys, "_hash", counting)
    return counted


def setup(tmp_path):
    keys = KeyFile(tmp_path / "k.json")
    key, record = keys.create("gov", {"gov"})
    clock = Clock()
    authenticator = Authenticator(KeyFileWatcher(keys), TENANCY, KeyFailureLimit(max_failures=3, window_s=60),
                                  clock=clock)
    return authenticator, key, record, clock


def test_wrong_secrets_for_a_key_id_stop_costing_a_hash_after_the_limit(tmp_path, hashes):
    authenticator, key, record, clock = setup(tmp_path)
    hashes.clear()  # creating the key hashed it once
    wrong = f"Bearer fk_{record.key_id}_{'A' * 43}"
    for _ in range(10):
        assert authenticator.authenticate(wrong).reason is RejectionReason.UNAUTHENTICATED
    assert len(hashes) == 3  # then refused unhashed, with the same answer
    clock.now = 61
    assert authenticator.authenticate(wrong).reason is RejectionReason.UNAUTHENTICATED
    assert len(hashes) == 4  # the window passed: one more try is hashed


def test_a_key_that_verified_keeps_working_while_its_id_is_guessed_at(tmp_path, hashes):
    authenticator, key, record, clock = setup(tmp_path)
    hashes.clear()  # creating the key hashed it once
    assert authenticator.authenticate(f"Bearer {key}").id == "gov"
    for _ in range(10):
        authenticator.authenticate(f"Bearer fk_{record.key_id}_{'B' * 43}")
    assert authenticator.authenticate(f"Bearer {key}").id == "gov"  # from the memo, no hash
    assert len(hashes) == 1 + 3


def test_unknown_ids_and_malformed_keys_never_hash(tmp_path, hashes):
    authenticator, *_ = setup(tmp_path)
    hashes.clear()
    for header in ("Bearer fk_000000000000_x", "Bearer garbage", "Bearer " + "x" * 10_000):
        assert authenticator.authenticate(header).reason is RejectionReason.UNAUTHENTICATED
    assert hashes == []


def test_start_hands_the_hash_to_the_caller_only_for_a_live_unverified_key(tmp_path):
    authenticator, key, *_ = setup(tmp_path)
    pending = authenticator.start(f"Bearer {key}")
    assert isinstance(pending, PendingCheck)
    assert authenticator.finish(pending, pending.verify()).id == "gov"
    assert authenticator.start(f"Bearer {key}").id == "gov"  # verified once: no hash pending


def test_a_key_that_verified_stays_verified_when_the_key_file_changes(tmp_path, hashes):
    keys = KeyFile(tmp_path / "k.json")
    key, record = keys.create("gov", {"gov"})
    clock = Clock()
    watcher = KeyFileWatcher(keys, check_interval_s=1.0, clock=clock)
    authenticator = Authenticator(watcher, TENANCY, KeyFailureLimit(max_failures=1), clock=clock)
    assert authenticator.authenticate(f"Bearer {key}").id == "gov"
    other, other_record = keys.create("gov", {"gov"})  # an operator adds a key...
    clock.now = 2.0
    authenticator.authenticate(f"Bearer fk_{record.key_id}_{'C' * 43}")  # ...while someone guesses
    hashes.clear()
    assert authenticator.authenticate(f"Bearer {key}").id == "gov"  # still remembered: no hash
    assert hashes == []
    keys.revoke(record.key_id)
    clock.now = 4.0
    assert authenticator.authenticate(f"Bearer {key}").reason is RejectionReason.UNAUTHENTICATED
