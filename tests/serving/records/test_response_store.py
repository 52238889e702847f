"""The stored Responses: per tenant, expiring, in the domain's own database file (0600)."""

from __future__ import annotations

import asyncio
import stat

import pytest

from routers import ClassPolicy, Tenancy, Tenant, TenantClass
from serving.frontdoor.errors import APIError
from serving.frontdoor.stored_responses import StoredResponses, output_items
from serving.records.response_store import ResponseStore, response_store_url

ANSWER = {"id": "resp_1", "status": "completed", "output": [
    {"type": "reasoning", "summary": []},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Amster"},
                                                          {"type": "output_text", "text": "dam"}]},
    {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}", "status": "completed"}]}


def test_a_response_is_its_tenants_until_it_expires(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'usage.db'}"
    store = ResponseStore(url)
    store.put("ministry", ANSWER, [{"role": "user", "content": "hoofdstad?"}], kept_s=60, now=1000.0)
    assert store.get("ministry", "resp_1", now=1059.0) == ([{"role": "user", "content": "hoofdstad?"}], ANSWER)
    assert store.get("city", "resp_1", now=1001.0) is None  # another tenant's id is no one's
    assert store.get("ministry", "resp_1", now=1061.0) is None  # expired
    assert not store.delete("city", "resp_1") and store.delete("ministry", "resp_1")
    assert store.get("ministry", "resp_1", now=1001.0) is None and not store.delete("ministry", "resp_1")
    # An expired response is also removed, by the next write.
    store.put("ministry", {**ANSWER, "id": "resp_2"}, [], kept_s=1, now=2000.0)
    store.put("ministry", {**ANSWER, "id": "resp_3"}, [], kept_s=1, now=3000.0)
    assert store.get("ministry", "resp_2", now=0.0) is None
    assert stat.S_IMODE((tmp_path / "db" / "usage.db").stat().st_mode) == 0o600
    store.close()


def test_a_sqlite_ledger_gets_a_response_file_beside_it():
    assert response_store_url("sqlite:////srv/fabriek/government/usage.db") == "sqlite:////srv/fabriek/government/responses.db"
    url = "postgresql+psycopg://fabriek_government:pw@db/fabriek_government"
    assert response_store_url(url) == url


def test_an_answers_output_becomes_the_next_requests_input():
    assert output_items(ANSWER) == [{"role": "assistant", "content": "Amsterdam"},
                                    {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"}]


def stored(tmp_path, stores: bool = True) -> tuple[StoredResponses, Tenant]:
    tenant = Tenant("ministry", TenantClass.GOVERNMENT, frozenset({"m"}))
    tenancy = Tenancy(tenants={"ministry": tenant}, classes={
        TenantClass.GOVERNMENT: ClassPolicy(frozenset({"gov"}), store_responses=stores, responses_kept_s=60)})
    return StoredResponses(tenancy, f"sqlite:///{tmp_path / 'usage.db'}"), tenant


def test_a_continued_request_carries_the_whole_conversation(tmp_path):
    responses, tenant = stored(tmp_path)

    async def run():
        data, keeper = await responses.prepare(tenant, {"input": "hoofdstad?", "model": "m"})
        assert data == {"input": "hoofdstad?", "model": "m"} and keeper is not None
        await responses.keep(keeper, ANSWER)
        data, keeper = await responses.prepare(tenant, {"input": "en de grootste stad?", "previous_response_id": "resp_1"})
        assert data == {"input": [{"role": "user", "content": "hoofdstad?"}, *output_items(ANSWER),
                                  {"role": "user", "content": "en de grootste stad?"}]}
        assert (await responses.retrieve(tenant, "resp_1"))["id"] == "resp_1"
        with pytest.raises(APIError) as missing:
            await responses.prepare(tenant, {"input": "x", "previous_response_id": "resp_nope"})
        assert missing.value.status == 404
        _, keeper = await responses.prepare(tenant, {"input": "x", "store": False})
        assert keeper is None
        await responses.keep(await _keeper(responses, tenant), {**ANSWER, "id": "resp_9", "status": "failed"})
        with pytest.raises(APIError):  # a failed answer is not kept
            await responses.retrieve(tenant, "resp_9")
        assert (await responses.delete(tenant, "resp_1"))["deleted"] is True
        with pytest.raises(APIError):
            await responses.delete(tenant, "resp_1")

    asyncio.run(run())


async def _keeper(responses, tenant):
    return (await responses.prepare(tenant, {"input": "x"}))[1]


def test_a_class_that_keeps_nothing_never_opens_the_store(tmp_path):
    responses, tenant = stored(tmp_path, stores=False)

    async def run():
        data = {"input": "x", "store": True}
        assert await responses.prepare(tenant, data) == (data, None)
        with pytest.raises(APIError):
            await responses.retrieve(tenant, "resp_1")
        with pytest.raises(APIError):
            await responses.delete(tenant, "resp_1")

    asyncio.run(run())
    assert not (tmp_path / "responses.db").exists()
