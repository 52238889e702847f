"""Per-tenant prefix-cache salts, so that no tenant can probe another's cached prompts.

vLLM shares KV-cache blocks between requests whose prefixes match; the timing of a cache
hit reveals that someone sent that prefix before. Salting every request with a value
unique to its tenant keeps each tenant's cache entries to itself. The salt is derived from
a server secret, never from client input, so a client can neither choose nor guess it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from routers.key_file import give_to_directory_owner, make_private_dir

SECRET_BYTES = 32


def cache_salt_for(secret: bytes, tenant_id: str) -> str:
    """HMAC-SHA256(secret, tenant id) as 64 hex digits (vLLM refuses '/' and '@' in salts)."""
    return hmac.new(secret, tenant_id.encode(), hashlib.sha256).hexdigest()


def load_or_create_secret(path: Path) -> bytes:
    """Read the salt secret at ``path``; create it (random, mode 0600, in directories fabriek
    creates 0700) if it does not exist.

    Raises:
        ValueError: the file exists but holds fewer than 32 bytes of hex.
    """
    path = Path(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    make_private_dir(path.parent)
    # Written aside (mkstemp makes it 0600), then hard-linked into place: link() fails if the
    # name exists, so concurrent first starts agree on one secret and none reads a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            give_to_directory_owner(f.fileno(), path.parent)
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read(path)


def _read(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the cache salt secret must be hex") from None
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path}: the cache salt secret must hold at least {SECRET_BYTES} bytes "
                         f"({2 * SECRET_BYTES} hex digits)")
    return secret
