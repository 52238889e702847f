"""Authentication: from the credentials a request carries to the tenant it acts for.

A key's first check costs a scrypt hash (tens of milliseconds of CPU), so it is split in two:
``start`` does everything cheap (parse, look the key id up, the memo of keys that verified)
and hands back a ``PendingCheck`` only for a live key id whose secret still needs hashing;
the caller runs ``PendingCheck.verify`` off its event loop and ends with ``finish``. Wrong
secrets for a real key id are limited per key id (``KeyFailureLimit``): past the limit the
key id is refused without hashing until its window passes, so guessing cannot be used to
burn the front door's CPU. A key that already verified is not affected (its memo answers).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from routers.api_keys import KeyRecord, KeyRing
from routers.interfaces import Rejection, RejectionReason
from routers.key_file import KeyFileWatcher
from routers.tenants import Tenancy, Tenant

_SCHEME = "bearer"
# Wrong secrets per key id per window before the key id is refused without hashing.
MAX_FAILURES_PER_KEY = 5
FAILURE_WINDOW_S = 60.0


@dataclass
class KeyFailureLimit:
    """Failed checks per key id in a sliding window. Only ids of live records are counted,
    so its memory is bounded by the key file."""

    max_failures: int = MAX_FAILURES_PER_KEY
    window_s: float = FAILURE_WINDOW_S
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def is_blocked(self, key_id: str, now: float) -> bool:
        failures = self._failures.get(key_id)
        if not failures:
            return False
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key_id]
            return False
        return len(failures) >= self.max_failures

    def record_failure(self, key_id: str, now: float) -> None:
        self._failures.setdefault(key_id, deque()).append(now)


@dataclass(frozen=True)
class PendingCheck:
    """A live key id whose secret is still to be hashed: call ``verify`` (off the event loop)."""

    key: str
    record: KeyRecord
    ring: KeyRing

    def verify(self) -> bool:
        return self.ring.verify(self.key, self.record)


class Authenticator:
    """Resolves ``Authorization: Bearer KEY`` to a tenant of the config.

    Every failure gives the same rejection, so a client cannot tell an unknown key from a
    revoked one, from one whose tenant was removed from the config, or from a key id that is
    being guessed at.

    Args:
        keys: the watched key file.
        tenancy: the tenants of the platform config.
        failures: the per-key-id limit of wrong secrets.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, keys: KeyFileWatcher, tenancy: Tenancy, failures: KeyFailureLimit | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._keys = keys
        self._tenancy = tenancy
        self._failures = failures or KeyFailureLimit()
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Tenant | Rejection:
        """``start`` and ``finish`` in one call, hashing inline (for callers without an event loop)."""
        decision = self.start(authorization)
        if isinstance(decision, PendingCheck):
            return self.finish(decision, decision.verify())
        return decision

    def start(self, authorization: str | None) -> Tenant | Rejection | PendingCheck:
        """The tenant, a rejection, or the hash still to do.

        Args:
            authorization: the value of the request's Authorization header, if any.
        """
        if not authorization:
            return _rejection("Missing API key: send `Authorization: Bearer <key>`.")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != _SCHEME or not key:
            return _rejection("Malformed Authorization header: expected `Bearer <key>`.")
        ring = self._keys.current()
        record = ring.candidate(key)
        if record is None:
            return _invalid()
        if ring.is_remembered(key, record):
            return self._tenant_of(record)
        if self._failures.is_blocked(record.key_id, self._clock()):
            return _invalid()
        return PendingCheck(key, record, ring)

    def finish(self, pending: PendingCheck, verified: bool) -> Tenant | Rejection:
        """The outcome of a ``PendingCheck`` whose ``verify`` returned ``verified``."""
        if not verified:
            self._failures.record_failure(pending.record.key_id, self._clock())
            return _invalid()
        return self._tenant_of(pending.record)

    def _tenant_of(self, record: KeyRecord) -> Tenant | Rejection:
        tenant = self._tenancy.tenant(record.tenant_id)
        return tenant if tenant is not None else _invalid()


def _invalid() -> Rejection:
    return _rejection("Invalid or revoked API key.")


def _rejection(message: str) -> Rejection:
    return Rejection(RejectionReason.UNAUTHENTICATED, "api_key", message)
