"""The Responses API's stored state, for the classes that keep it (``store_responses``).

The engine keeps nothing: a request that continues a stored response
(``previous_response_id``) is sent with the whole stored conversation before its own input,
and its answer is stored in turn (``serving.records.response_store``: the domain's own
database, read and written per tenant). A class that keeps no responses never opens the
store; its requests are refused ``store: true`` and ``previous_response_id`` before they
get here (``routers.request_shape``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from routers import Tenancy, Tenant
from routers.request_shape import shown
from serving.frontdoor.errors import APIError
from serving.records.response_store import ResponseStore, response_store_url

logger = logging.getLogger("fabriek.frontdoor")


@dataclass
class Keeper:
    """What to store once a request's answer is complete: its conversation so far."""

    tenant: Tenant
    conversation: list[Any]
    kept_s: float


def input_items(value: Any) -> list[Any]:
    """A Responses ``input`` (a string, or a list of items) as a list of items."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def output_items(response: dict[str, Any]) -> list[Any]:
    """An answer's output as input items for the next request of its conversation: messages
    as assistant messages of their text, function calls as they are; reasoning is left out."""
    items = []
    for item in response.get("output") or []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            text = "".join(part.get("text", "") for part in item.get("content") or []
                           if isinstance(part, dict) and part.get("type") == "output_text")
            items.append({"role": "assistant", "content": text})
        elif kind == "function_call":
            items.append({key: item[key] for key in ("type", "call_id", "name", "arguments") if key in item})
    return items


class StoredResponses:
    """The domain's stored responses, for the tenants whose class keeps them.

    Args:
        tenancy: the class policies (``store_responses``, ``responses_kept_s``).
        url: the domain's ledger database; the store is beside it (``response_store_url``),
            opened on first use, by a class that stores.
    """

    def __init__(self, tenancy: Tenancy, url: str):
        self._tenancy = tenancy
        self._url = response_store_url(url)
        self._store: ResponseStore | None = None

    def stores(self, tenant: Tenant) -> bool:
        """Whether the tenant's class keeps its responses."""
        return self._tenancy.policy_for(tenant).store_responses

    def _opened(self) -> ResponseStore:
        if self._store is None:
            self._store = ResponseStore(self._url)
        return self._store

    async def prepare(self, tenant: Tenant, data: dict[str, Any]) -> tuple[dict[str, Any], Keeper | None]:
        """The request as the engine must see it (a continued conversation in full), and what
        to keep of its answer; no keeper for a class that keeps nothing or ``store: false``.

        Raises:
            APIError: 404, the tenant has no (unexpired) response of that id.
        """
        if not self.stores(tenant):
            return data, None
        conversation: list[Any] = []
        previous = data.get("previous_response_id")
        if previous is not None:
            found = await asyncio.to_thread(self._opened().get, tenant.id, previous)
            if found is None:
                raise _not_found(previous, "previous_response_id")
            conversation = found[0]
            data = {key: value for key, value in data.items() if key != "previous_response_id"}
        conversation = conversation + input_items(data.get("input"))
        if previous is not None:
            data["input"] = conversation
        if data.get("store") is False:
            return data, None
        return data, Keeper(tenant, conversation, self._tenancy.policy_for(tenant).responses_kept_s)

    async def keep(self, keeper: Keeper, response: dict[str, Any]) -> None:
        """Store an answer that ended (completed, or cut at its token limit: it can be continued);
        a failure to store is logged, never the client's (it has its answer)."""
        if response.get("status") not in ("completed", "incomplete") or not response.get("id"):
            return
        try:
            await asyncio.to_thread(self._opened().put, keeper.tenant.id, response,
                                    keeper.conversation + output_items(response), keeper.kept_s)
        except Exception as err:
            logger.error("response %s of tenant %s not stored: %s", response.get("id"), keeper.tenant.id,
                         type(err).__name__)

    async def retrieve(self, tenant: Tenant, response_id: str) -> dict[str, Any]:
        """The tenant's own stored response.

        Raises:
            APIError: 404 for any other id, whether it exists or not.
        """
        found = await asyncio.to_thread(self._opened().get, tenant.id, response_id) if self.stores(tenant) else None
        if found is None:
            raise _not_found(response_id)
        return found[1]

    async def delete(self, tenant: Tenant, response_id: str) -> dict[str, Any]:
        """Delete the tenant's own stored response (OpenAI's deletion object).

        Raises:
            APIError: 404 for any other id.
        """
        if not (self.stores(tenant) and await asyncio.to_thread(self._opened().delete, tenant.id, response_id)):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _not_found(response_id: str, param: str = "response_id") -> APIError:
    return APIError(404, f"Response with id '{shown(response_id)}' not found.", param=param)
