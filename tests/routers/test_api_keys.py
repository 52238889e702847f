"""API keys: format, hashing, verification and revocation in memory."""

from __future__ import annotations

import itertools

import pytest

from routers.api_keys import KeyRing, key_id_of, new_key


def counter_bytes():
    """Deterministic 'randomness': distinct bytes on every call."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def test_new_key_has_prefix_id_and_secret_and_stores_no_secret():
    key, record = new_key("gov", now=100.0)
    assert key.startswith(f"fk_{record.key_id}_")
    assert len(record.key_id) == 12 and len(key) > 50
    assert key not in repr(record) and key.split("_", 2)[2] not in repr(record)
    assert record.tenant_id == "gov" and record.created_at == 100.0 and not record.is_revoked


def test_new_key_ids_avoid_taken_ones():
    random_bytes = counter_bytes()
    _, first = new_key("gov", 0, random_bytes=counter_bytes())
    _, second = new_key("gov", 0, existing_ids=[first.key_id], random_bytes=random_bytes)
    assert second.key_id != first.key_id


@pytest.mark.parametrize(("key", "expected"), [
    ("fk_0123456789ab_secret", "0123456789ab"),
    ("fk_0123456789ab_sec_ret-x", "0123456789ab"),
    ("fk_0123456789ab_", None),
    ("fk_0123456789AB_secret", None),
    ("fk_0123_secret", None),
    ("sk_0123456789ab_secret", None),
    ("", None),
    ("fk", None),
])
def test_key_id_parsing(key, expected):
    assert key_id_of(key) == expected


def test_ring_authenticates_only_the_exact_live_key():
    key, record = new_key("gov", 0)
    other, other_record = new_key("pilot", 0)
    ring = KeyRing([record, other_record.revoked(5)])
    assert ring.authenticate(key) == record
    assert ring.authenticate(key) == record  # memoized path
    assert ring.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.authenticate(other) is None  # revoked
    assert ring.authenticate("fk_ffffffffffff_nope") is None  # unknown id
    assert ring.authenticate("garbage") is None


def test_wrong_secret_after_a_memoized_success_is_still_refused():
    key, record = new_key("gov", 0)
    ring = KeyRing([record])
    assert ring.authenticate(key) is not None
    assert ring.authenticate(f"fk_{record.key_id}_forged") is None


def test_revoking_keeps_the_first_revocation_time():
    _, record = new_key("gov", 0)
    assert record.revoked(5).revoked(9).revoked_at == 5
