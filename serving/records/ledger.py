"""The usage ledger: one durable record per request, for billing and audit. No content.

Each request writes its record twice: when it is admitted (``status='started'``, committed
before the engine sees the request) and when it ends (tokens, status, timings). A crash or
kill in between leaves the started record, which ``totals`` reports as ``interrupted``:
nothing is lost. SQLite by default (WAL mode, so a committed write survives the process
being killed, and several ingress replicas can write one file); PostgreSQL by URL.

Columns added since the first release (``energy_j``) are added to an existing ledger when it
is opened: ``create_all`` creates a missing table but never alters one, and a ledger outlives
the fabriek that created it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Float, Integer, String, bindparam, create_engine, event, exc, func, inspect,
                        select, text, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routers.key_file import make_private_dir

STARTED, OK, ERROR, REJECTED, CANCELLED = "started", "ok", "error", "rejected", "cancelled"
# A started record older than this without an end belongs to a request that was cut off.
INTERRUPTED_AFTER_S = 3600.0
# How long a write waits for SQLite's write lock (another process holding it) before it
# fails with "database is locked": a request waits for its started record, so a lock held
# for minutes must fail the write (and the request, with 503), not hang it.
SQLITE_BUSY_TIMEOUT_S = 2.0
# How long connecting to a database server may take (an address that does not answer).
CONNECT_TIMEOUT_S = 5
# The drivers' names for the connect timeout (psycopg and psycopg2 pass libpq's).
_CONNECT_TIMEOUT_ARG = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout"}
# Columns of ``usage_records`` newer than the table itself: a ledger created before them
# gets them (nullable, so its old records read None) when a UsageLedger opens it.
_ADDED_COLUMNS = ("energy_j",)
# Errors of the database rather than of a write: locked, full, read-only, unreachable, or a
# pool that found no connection in time. Retrying the same write later may succeed.
_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError)


class LedgerUnavailable(Exception):
    """The database did not take a write (locked, full, unreachable): nothing was written.

    Its message names the cause as the driver gave it, without the statement or its
    parameters, so that it can be logged as is.
    """


class _Base(DeclarativeBase):
    pass


class UsageRecord(_Base):
    """One request; timestamps in Unix seconds, durations in milliseconds."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    started_at: Mapped[float] = mapped_column(Float, index=True)
    finished_at: Mapped[float | None] = mapped_column(Float)
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)
    tenant_class: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    protocol: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(64))
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    queue_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # Joules the engine's meter attributed to the request; None where nothing measured it.
    energy_j: Mapped[float | None] = mapped_column(Float)


@dataclass(frozen=True)
class RequestStart:
    """What is known when a request is admitted (or refused after authentication)."""

    request_id: str
    tenant_id: str
    tenant_class: str
    pool: str | None
    model: str | None
    protocol: str
    reserved_tokens: int = 0
    trace_id: str | None = None


@dataclass(frozen=True)
class RequestEnd:
    """How a request ended."""

    status: str
    status_code: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    reason: str | None = None
    # Joules the engine's meter attributed to the request; None: not measured (no hardware
    # energy counter, or a request that never reached an engine).
    energy_j: float | None = None


@dataclass(frozen=True)
class Write:
    """One write of a batch: a started record (``end`` None), a finished record in one go
    (both), or the end of a started record (``start`` None, ``request_id`` set)."""

    start: RequestStart | None = None
    end: RequestEnd | None = None
    request_id: str | None = None
    at: float = 0.0

    @property
    def is_insert(self) -> bool:
        return self.start is not None


def _end_values(end: RequestEnd) -> dict:
    return dict(status=end.status, status_code=end.status_code, reason=end.reason,
                prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens,
                queue_ms=end.queue_ms, ttft_ms=end.ttft_ms, latency_ms=end.latency_ms,
                energy_j=end.energy_j)


_NO_END = _end_values(RequestEnd(STARTED, None))  # type: ignore[arg-type]


def _insert_row(write: Write) -> dict:
    start = write.start
    return dict(request_id=start.request_id, started_at=write.at, tenant_id=start.tenant_id,
                tenant_class=start.tenant_class, pool=start.pool, model=start.model,
                protocol=start.protocol, reserved_tokens=start.reserved_tokens,
                trace_id=start.trace_id, finished_at=write.at if write.end else None,
                **(_end_values(write.end) if write.end else _NO_END))


def _update_row(write: Write) -> dict:
    return dict(target_request_id=write.request_id, finished_at=write.at, **_end_values(write.end))


_INSERT = UsageRecord.__table__.insert()
# The SET clause comes from the keys of each row (SQLAlchemy's executemany UPDATE).
_FINISH = update(UsageRecord).where(UsageRecord.request_id == bindparam("target_request_id"))


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(connection, _record):
        cursor = connection.cursor()
        # WAL: a commit is in the log file before it returns, so it survives a killed
        # process (NORMAL skips only the fsync that guards against power loss); readers
        # and the writer of another ingress replica do not block each other.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _connect_args(url: str) -> dict:
    """Bounds on each connection: SQLite's busy timeout (the driver's ``timeout``, in force
    from the first statement, the PRAGMAs above included), a server's connect timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"timeout": SQLITE_BUSY_TIMEOUT_S}
    arg = _CONNECT_TIMEOUT_ARG.get(parsed.get_driver_name())
    return {arg: CONNECT_TIMEOUT_S} if arg else {}


def _cause(error: Exception) -> str:
    """The driver's error, first line only: SQLAlchemy's own message adds the statement and
    its parameters (tenant ids, request ids), which logs of an outage do not need."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _create_private_sqlite_file(url: str) -> None:
    """Create a SQLite ledger's file 0600 (in directories fabriek creates 0700) before SQLite
    would, at the umask's mode (often 0644): the ledger names tenants and their usage. SQLite
    gives its -wal and -shm files the database file's mode. Existing files keep theirs."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return
    path = Path(database)
    make_private_dir(path.parent)
    # An empty file is an empty SQLite database; O_CREAT without O_TRUNC leaves one that exists.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _columns(engine: Engine) -> set[str]:
    """The columns the database has now (a fresh inspector: one caches what it read)."""
    return {column["name"] for column in inspect(engine).get_columns(UsageRecord.__tablename__)}


def _add_column(engine: Engine, name: str) -> None:
    """Adds one of the model's columns to an existing table. Another process opening the same
    old ledger may add it first: the database then refuses ours as a duplicate (each names
    that error differently), and the column being there after all is what counts."""
    column = UsageRecord.__table__.c[name]
    ddl = (f"ALTER TABLE {UsageRecord.__tablename__} ADD COLUMN {column.name} "
           f"{column.type.compile(dialect=engine.dialect)}")
    try:
        with engine.begin() as connection:
            connection.execute(text(ddl))
    except exc.DBAPIError:
        if name not in _columns(engine):
            raise


def _add_missing_columns(engine: Engine) -> None:
    present = _columns(engine)
    for name in _ADDED_COLUMNS:
        if name not in present:
            _add_column(engine, name)


class UsageLedger:
    """Writes and sums usage records. Blocking: async callers use a worker thread."""

    def __init__(self, url: str):
        _create_private_sqlite_file(url)
        # A pre-ping finds a server's dropped connections; a SQLite file has none to drop.
        self._engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"),
                                     connect_args=_connect_args(url))
        if self._engine.dialect.name == "sqlite":
            _tune_sqlite(self._engine)
        _Base.metadata.create_all(self._engine)
        _add_missing_columns(self._engine)

    def start(self, start: RequestStart, now: float | None = None) -> None:
        """Records an admitted request; committed when this returns."""
        self.write([Write(start=start, at=time.time() if now is None else now)])

    def finish(self, request_id: str, end: RequestEnd, now: float | None = None) -> None:
        """Completes a started record."""
        self.write([Write(end=end, request_id=request_id, at=time.time() if now is None else now)])

    def record(self, start: RequestStart, end: RequestEnd) -> None:
        """A finished record in one write (a request refused before it was admitted)."""
        self.write([Write(start=start, end=end, at=time.time())])

    def write(self, writes: Sequence[Write]) -> None:
        """Writes a batch in one transaction: new records first, then ends, so an end may
        complete a record of the same batch. All or nothing.

        Raises:
            LedgerUnavailable: the database is locked, full or unreachable (retry later).
            sqlalchemy.exc.SQLAlchemyError: a write the database refuses (a duplicate id).
        """
        inserts = [_insert_row(w) for w in writes if w.is_insert]
        updates = [_update_row(w) for w in writes if not w.is_insert]
        try:
            with self._engine.begin() as connection:
                if inserts:
                    connection.execute(_INSERT, inserts)
                if updates:
                    connection.execute(_FINISH, updates)
        except _UNAVAILABLE as error:
            raise LedgerUnavailable(_cause(error)) from error

    def records(self, tenant_id: str | None = None, since: float | None = None) -> list[UsageRecord]:
        """The records, oldest first (for tests and audits)."""
        query = select(UsageRecord).order_by(UsageRecord.id)
        if tenant_id is not None:
            query = query.where(UsageRecord.tenant_id == tenant_id)
        if since is not None:
            query = query.where(UsageRecord.started_at >= since)
        with self._engine.connect() as connection:
            return list(connection.execute(query).all())

    def totals(self, tenant_id: str | None = None, since: float | None = None,
               now: float | None = None) -> list[dict]:
        """Requests, tokens and energy per tenant, model and status; old unfinished records
        count as ``interrupted``, recent ones as ``in progress``.

        ``energy_j`` is the sum over the metered records (None when none was metered) and
        ``metered_requests`` their number: fewer than ``requests`` means the sum leaves some
        out, which a plain 0 or None could not tell.
        """
        now = time.time() if now is None else now
        query = select(UsageRecord.tenant_id, UsageRecord.model, UsageRecord.status,
                       func.count().label("requests"),
                       func.sum(UsageRecord.prompt_tokens).label("prompt_tokens"),
                       func.sum(UsageRecord.completion_tokens).label("completion_tokens"),
                       func.sum(UsageRecord.reserved_tokens).label("reserved_tokens"),
                       # SUM and COUNT of a column skip its NULLs (records not metered).
                       func.sum(UsageRecord.energy_j).label("energy_j"),
                       func.count(UsageRecord.energy_j).label("metered_requests"),
                       func.max(UsageRecord.started_at).label("last_started_at"))
        if tenant_id is not None:
            query = query.where(UsageRecord.tenant_id == tenant_id)
        if since is not None:
            query = query.where(UsageRecord.started_at >= since)
        query = query.group_by(UsageRecord.tenant_id, UsageRecord.model, UsageRecord.status)
        with self._engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            if row["status"] == STARTED:
                row["status"] = ("in progress" if now - row["last_started_at"] < INTERRUPTED_AFTER_S
                                 else "interrupted")
        return sorted(rows, key=lambda r: (r["tenant_id"], r["model"] or "", r["status"]))

    def close(self) -> None:
        self._engine.dispose()
