"""API keys: random, shown once, stored only as salted scrypt hashes, checked in constant time.

A key reads ``fk_<key id>_<secret>``. The key id (12 hex digits) is stored in clear and
finds the key's record without scanning; the whole key is hashed with scrypt and a salt
of its own. Keys carry 256 random bits, so scrypt is not what keeps them safe; it makes a
leaked key file worthless even for keys that are later pasted somewhere weaker. Because
scrypt costs tens of milliseconds, a successful check is remembered per key id (as a keyed
digest, never the key itself) so that only a key's first request pays it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

KEY_PREFIX = "fk"
KEY_ID_HEX_DIGITS = 12
SECRET_BYTES = 32
SALT_BYTES = 16
# scrypt's interactive-login parameters (16 MiB, ~60 ms on the 2-core build machine).
SCRYPT_PARAMS: Mapping[str, int] = {"n": 2**14, "r": 8, "p": 1}
_HASH_BYTES = 32


@dataclass(frozen=True)
class KeyRecord:
    """What the key file keeps of one key: no secret, only its salted hash.

    Args:
        key_id: the public part of the key, unique in the file.
        tenant_id: the tenant the key authenticates.
        salt / key_hash: hex; ``key_hash`` = scrypt(key, salt, **kdf).
        kdf: scrypt parameters the hash was made with.
        created_at: Unix time of creation.
        revoked_at: Unix time of revocation; a revoked key authenticates nothing.
    """

    key_id: str
    tenant_id: str
    salt: str
    key_hash: str
    kdf: Mapping[str, int]
    created_at: float
    revoked_at: float | None = None

    @property
    def is_revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def revoked(self, now: float) -> "KeyRecord":
        """This record, revoked at ``now`` (an already revoked record keeps its time)."""
        return self if self.is_revoked else replace(self, revoked_at=now)


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != KEY_ID_HEX_DIGITS or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def new_key(tenant_id: str, now: float, existing_ids: Iterable[str] = (),
            random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> tuple[str, KeyRecord]:
    """Make a new key for ``tenant_id``.

    Args:
        existing_ids: key ids already in use; the new id differs from all of them.
        random_bytes: source of randomness (injected so tests can replay).

    Returns:
        The key (to show once, never to store) and the record to store.
    """
    taken = set(existing_ids)
    while (key_id := random_bytes(KEY_ID_HEX_DIGITS // 2).hex()) in taken:
        pass
    secret = _urlsafe(random_bytes(SECRET_BYTES))
    key = f"{KEY_PREFIX}_{key_id}_{secret}"
    salt = random_bytes(SALT_BYTES)
    record = KeyRecord(key_id=key_id, tenant_id=tenant_id, salt=salt.hex(),
                       key_hash=_hash(key, salt, SCRYPT_PARAMS).hex(), kdf=dict(SCRYPT_PARAMS),
                       created_at=now)
    return key, record


class KeyRing:
    """The key records of one version of the key file, with memoized verification.

    Args:
        records: every record, revoked ones included.
    """

    def __init__(self, records: Iterable[KeyRecord]):
        self._records = {r.key_id: r for r in records}
        # key id -> keyed digest of the key that last verified; the digest key lives only
        # in this process, so the memo is useless to anyone who reads memory dumps of it.
        self._memo_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}

    def remembering(self, previous: "KeyRing") -> "KeyRing":
        """This ring, keeping what ``previous`` verified for records that are still the same
        and live (a revoked or re-keyed record is checked afresh)."""
        self._memo_key = previous._memo_key
        self._verified = {key_id: digest for key_id, digest in previous._verified.items()
                          if (record := self._records.get(key_id)) is not None and not record.is_revoked
                          and record == previous._records.get(key_id)}
        return self

    @property
    def records(self) -> list[KeyRecord]:
        """All records, in the file's order."""
        return list(self._records.values())

    def authenticate(self, key: str) -> KeyRecord | None:
        """The live record of ``key``, or None for a malformed, unknown, wrong or revoked key."""
        record = self.candidate(key)
        if record is None or self.is_remembered(key, record):
            return record
        return record if self.verify(key, record) else None

    def candidate(self, key: str) -> KeyRecord | None:
        """The live record whose key id ``key`` carries (its secret not yet checked), if any.

        Unknown ids, revoked keys and malformed keys end here, without hashing anything."""
        key_id = key_id_of(key)
        record = self._records.get(key_id) if key_id is not None else None
        return None if record is None or record.is_revoked else record

    def is_remembered(self, key: str, record: KeyRecord) -> bool:
        """Whether ``key`` is the key that last verified for its record (no scrypt: a keyed digest)."""
        remembered = self._verified.get(record.key_id)
        return remembered is not None and hmac.compare_digest(remembered, self._digest(key))

    def verify(self, key: str, record: KeyRecord) -> bool:
        """The full check, scrypt included (tens of ms; thread-safe, and hashlib releases the
        GIL while it hashes, so callers run it off their event loop)."""
        actual = _hash(key, bytes.fromhex(record.salt), record.kdf)
        if not hmac.compare_digest(bytes.fromhex(record.key_hash), actual):
            return False
        self._verified[record.key_id] = self._digest(key)
        return True

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._memo_key, key.encode(), hashlib.sha256).digest()


def _hash(key: str, salt: bytes, kdf: Mapping[str, int]) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=kdf["n"], r=kdf["r"], p=kdf["p"],
                          maxmem=256 * kdf["n"] * kdf["r"], dklen=_HASH_BYTES)


def _urlsafe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
