"""Stored Responses: the conversations of the classes that keep them, in their domain's own
database (``response_store_url``: beside its usage ledger), for their tenants only.

A stored response is its answer (the JSON the client got) and the conversation that led to
it: the input items of every request in its chain, with each answer's output items. A
request that names it as ``previous_response_id`` is sent to the engine with that whole
conversation before its own input (no state lives in the engine), and its answer is stored
with the longer conversation in turn. Every read and delete is by (response id, tenant): a
tenant cannot reach another's responses, and another domain's front door has another
database. A response past its class's ``responses_kept_s`` is gone: not read, and deleted
by the next write.

Blocking: the front door calls it in a worker thread.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pathlib import Path

from sqlalchemy import Float, String, Text, create_engine, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from serving.records.ledger import _connect_args, _create_private_sqlite_file, _tune_sqlite


def response_store_url(ledger_url: str) -> str:
    """Where a domain keeps its responses, given its ledger's URL: a SQLite ledger gets a file
    of its own beside it (``responses.db``: content stays out of the accounting file, and its
    writes never wait for the ledger's lock); a database server, the ledger's database."""
    parsed = make_url(ledger_url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return ledger_url
    return parsed.set(database=str(Path(database).with_name("responses.db"))).render_as_string(hide_password=False)


class _Base(DeclarativeBase):
    pass


class StoredResponse(_Base):
    __tablename__ = "stored_responses"

    response_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    conversation: Mapped[str] = mapped_column(Text)  # JSON: the input items, oldest first
    response: Mapped[str] = mapped_column(Text)  # JSON: the response as the client got it


class ResponseStore:
    """Responses kept for their tenants, in the database at ``url``."""

    def __init__(self, url: str):
        _create_private_sqlite_file(url)
        self._engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), connect_args=_connect_args(url))
        if self._engine.dialect.name == "sqlite":
            _tune_sqlite(self._engine)
        _Base.metadata.create_all(self._engine)

    def put(self, tenant_id: str, response: dict[str, Any], conversation: list[Any], kept_s: float,
            now: float | None = None) -> None:
        """Keep ``response`` (its ``id`` the key) and the conversation that ends with it."""
        now = time.time() if now is None else now
        with self._engine.begin() as connection:
            connection.execute(delete(StoredResponse).where(StoredResponse.expires_at < now))
            connection.execute(StoredResponse.__table__.insert().values(
                response_id=response["id"], tenant_id=tenant_id, created_at=now, expires_at=now + kept_s,
                conversation=json.dumps(conversation), response=json.dumps(response)))

    def get(self, tenant_id: str, response_id: str, now: float | None = None) -> tuple[list[Any], dict] | None:
        """(conversation, response) of the tenant's own unexpired response; None otherwise."""
        now = time.time() if now is None else now
        query = select(StoredResponse.conversation, StoredResponse.response).where(
            StoredResponse.response_id == response_id, StoredResponse.tenant_id == tenant_id,
            StoredResponse.expires_at >= now)
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else (json.loads(row.conversation), json.loads(row.response))

    def delete(self, tenant_id: str, response_id: str) -> bool:
        """Delete the tenant's own response; False when it has none of that id."""
        with self._engine.begin() as connection:
            result = connection.execute(delete(StoredResponse).where(
                StoredResponse.response_id == response_id, StoredResponse.tenant_id == tenant_id))
        return result.rowcount > 0

    def close(self) -> None:
        self._engine.dispose()
