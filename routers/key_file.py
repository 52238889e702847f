"""The key file: API key records on disk, written atomically, re-read when it changes.

The file is JSON (``{"version": 1, "keys": [...]}``), mode 0600 (in directories that fabriek
creates 0700), and holds no secret, only salted hashes (see ``routers.api_keys``). It can be
a Kubernetes Secret mounted read-only into the ingress pods: Kubernetes swaps such mounts by
renaming, which the watcher notices as a new inode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Collection, Iterator

from routers.api_keys import KeyRecord, KeyRing, new_key

FORMAT_VERSION = 1

logger = logging.getLogger("fabriek.keys")


class KeyFileError(ValueError):
    """The key file is unreadable, malformed, or an operation on it is invalid."""


class KeyFile:
    """Creates, lists and revokes keys in one file.

    Args:
        path: the key file; it need not exist yet.
        clock: Unix time source for created/revoked stamps (injected for tests).
        random_bytes: randomness for new keys (injected for tests).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes):
        self.path = Path(path)
        self._clock = clock
        self._random_bytes = random_bytes

    def read(self) -> KeyRing:
        """The keys now in the file; an absent file has none.

        Raises:
            KeyFileError: the file cannot be read or parsed.
        """
        return KeyRing(self._load())

    def create(self, tenant_id: str, known_tenant_ids: Collection[str]) -> tuple[str, KeyRecord]:
        """Add a key for ``tenant_id``.

        Returns:
            The key, to be shown once, and its stored record.

        Raises:
            KeyFileError: the tenant is not one of ``known_tenant_ids``.
        """
        if tenant_id not in known_tenant_ids:
            raise KeyFileError(f"unknown tenant {tenant_id!r}; the platform config names "
                               f"{sorted(known_tenant_ids)}")
        with self._locked():
            records = self._load()
            key, record = new_key(tenant_id, self._clock(), (r.key_id for r in records),
                                  self._random_bytes)
            self._write([*records, record])
        return key, record

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke the key with ``key_id``; its record stays, marked revoked, for audit.

        Raises:
            KeyFileError: no key has this id.
        """
        with self._locked():
            records = self._load()
            if key_id not in {r.key_id for r in records}:
                raise KeyFileError(f"no key with id {key_id!r} in {self.path}")
            now = self._clock()
            records = [r.revoked(now) if r.key_id == key_id else r for r in records]
            self._write(records)
        return next(r for r in records if r.key_id == key_id)

    def _load(self) -> list[KeyRecord]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise KeyFileError(f"{self.path}: cannot read: {err.strerror}") from None
        try:
            data = json.loads(text)
            if data.get("version") != FORMAT_VERSION:
                raise KeyFileError(f"{self.path}: unsupported version {data.get('version')!r}")
            return [KeyRecord(**entry) for entry in data["keys"]]
        except KeyFileError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise KeyFileError(f"{self.path}: not a fabriek key file ({type(err).__name__}: {err})") from None

    def _write(self, records: list[KeyRecord]) -> None:
        # Temp file + rename: readers see the old file or the new one, never half of one.
        make_private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                give_to_directory_owner(f.fileno(), self.path.parent)
                json.dump({"version": FORMAT_VERSION, "keys": [_as_json(r) for r in records]},
                          f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `fabriek keys` commands at once must not each write a file missing the
        # other's key; the lock is a sibling file because the key file itself is replaced.
        make_private_dir(self.path.parent)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            give_to_directory_owner(fd, self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class KeyFileWatcher:
    """The current keys of a file that others change, re-read only when it changed.

    ``current()`` is meant to be called on every request: it looks at the file (one
    ``stat``) at most once per ``check_interval_s`` and parses it only when its inode,
    size or modification time differ.

    Args:
        key_file: the file to watch.
        check_interval_s: least time between two looks at the file.
        clock: monotonic time source (injected for tests).
    """

    def __init__(self, key_file: KeyFile, *, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._key_file = key_file
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._signature = self._stat()
        self._ring = key_file.read()  # a broken file at start-up is an error, raised here
        self._checked_at = clock()

    def current(self) -> KeyRing:
        """The keys as of the last look at the file.

        A file that turns unreadable or malformed keeps the last good keys (and is looked
        at again next interval): a half-edited file must not lock every tenant out, and
        fabriek's own writes are atomic, so a revocation is never half-applied.
        """
        now = self._clock()
        if now - self._checked_at < self._check_interval_s:
            return self._ring
        self._checked_at = now
        signature = self._stat()
        if signature != self._signature:
            try:
                # Keys that verified stay verified (their records unchanged): a `keys create`
                # must not send every tenant's next request back through scrypt, where a
                # guesser at its key id could hold it up (routers.authentication).
                self._ring = self._key_file.read().remembering(self._ring)
                self._signature = signature
            except KeyFileError as err:
                logger.warning("keeping the previous API keys: %s", err)
        return self._ring

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._key_file.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` whose new directories are 0700, for files no other user may read.

    Directories that exist keep their mode: a mounted Secret's or an operator's own choice.
    """
    missing = []
    path = Path(path)
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        # A concurrent first start may create it first, equally private.
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


def give_to_directory_owner(fd: int, directory: Path) -> None:
    """Make the file of ``fd`` its directory owner's when root writes it there.

    With `local.run_as`, each domain's directory belongs to the domain's own user, who alone
    may read its files (0600); a key file that root's `fabriek keys create` replaced would
    otherwise be root's, and the domain's front door could no longer read it.
    """
    if os.geteuid() != 0:
        return
    owner = os.stat(directory)
    if owner.st_uid != 0:
        os.fchown(fd, owner.st_uid, owner.st_gid)


def _as_json(record: KeyRecord) -> dict:
    data = asdict(record)
    data["kdf"] = dict(record.kdf)
    return data
