"""Authentication: from the credentials a request carries to the tenant it acts for."""

from __future__ import annotations

from routers.interfaces import Rejection, RejectionReason
from routers.key_file import KeyFileWatcher
from routers.tenants import Tenancy, Tenant

_SCHEME = "bearer"


class Authenticator:
    """Resolves ``Authorization: Bearer KEY`` to a tenant of the config.

    Every failure gives the same rejection, so a client cannot tell an unknown key from a
    revoked one or from one whose tenant was removed from the config.

    Args:
        keys: the watched key file.
        tenancy: the tenants of the platform config.
    """

    def __init__(self, keys: KeyFileWatcher, tenancy: Tenancy):
        self._keys = keys
        self._tenancy = tenancy

    def authenticate(self, authorization: str | None) -> Tenant | Rejection:
        """The tenant of a valid, unrevoked key, or a rejection.

        Args:
            authorization: the value of the request's Authorization header, if any.
        """
        if not authorization:
            return _rejection("Missing API key: send `Authorization: Bearer <key>`.")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != _SCHEME or not key.strip():
            return _rejection("Malformed Authorization header: expected `Bearer <key>`.")
        record = self._keys.current().authenticate(key.strip())
        tenant = self._tenancy.tenant(record.tenant_id) if record is not None else None
        if tenant is None:
            return _rejection("Invalid or revoked API key.")
        return tenant


def _rejection(message: str) -> Rejection:
    return Rejection(RejectionReason.UNAUTHENTICATED, "api_key", message)
