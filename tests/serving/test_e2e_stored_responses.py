"""Stored Responses, end to end with the official `openai` client: a class that keeps them
(the commercial class in the test config) continues, retrieves and deletes its own; no other
tenant, of its domain or another, can reach them; a class that keeps none stores nothing.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MODEL_ID
from tests.serving.test_e2e_apps import client
from tests.serving.test_e2e_hostile import finished_record

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of the Netherlands?"


@pytest.fixture(scope="module")
def pilot(fabriek_server) -> openai.OpenAI:
    return client(fabriek_server, "pilot-demo")


def ask(api: openai.OpenAI, text: str = QUESTION, **fields):
    return api.responses.create(model=MODEL_ID, input=text, max_output_tokens=12, temperature=0, **fields)


def stored_flag(api: openai.OpenAI, **fields) -> tuple[str, bool | None]:
    """(id, the response's `store` as the JSON says it: the SDK's model does not declare it)."""
    raw = api.responses.with_raw_response.create(model=MODEL_ID, input=QUESTION, max_output_tokens=12,
                                                 temperature=0, **fields)
    return raw.parse().id, raw.http_response.json().get("store")


def test_a_stored_response_is_retrieved_and_continued_by_its_tenant(pilot, fabriek_server):
    first_id, flag = stored_flag(pilot)
    assert flag is True
    first = pilot.responses.retrieve(first_id)
    kept = pilot.responses.retrieve(first.id)
    assert (kept.id, kept.output_text) == (first.id, first.output_text)
    raw = pilot.responses.with_raw_response.create(model=MODEL_ID, input="And its largest city?",
                                                   previous_response_id=first.id, max_output_tokens=12,
                                                   temperature=0)
    second = raw.parse()
    assert second.output_text and second.id != first.id
    # The engine read the whole conversation, and the tenant was charged for it.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    record = finished_record(fabriek_server, "pilot-demo", raw.headers["x-fabriek-request-id"])
    assert record.prompt_tokens == second.usage.input_tokens
    # A chain goes on: the third request carries the first two answers.
    third = ask(pilot, "Thanks.", previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_no_other_tenant_reaches_a_stored_response(pilot, fabriek_server):
    first = ask(pilot)
    for tenant in ("quota-conc2", "gov-demo"):  # the same domain's other tenant, another domain's
        other = client(fabriek_server, tenant)
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(first.id)
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as continued:
            ask(other, previous_response_id=first.id)
        # Government keeps no responses: the field itself is refused there.
        assert continued.value.status_code == (404 if tenant == "quota-conc2" else 400)
    assert pilot.responses.retrieve(first.id).id == first.id  # still there for its owner


def test_store_false_keeps_nothing_and_delete_removes(pilot):
    unkept_id, flag = stored_flag(pilot, store=False)
    assert not flag
    with pytest.raises(openai.NotFoundError):
        pilot.responses.retrieve(unkept_id)
    kept = ask(pilot)
    pilot.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        pilot.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        ask(pilot, previous_response_id=kept.id)


def test_a_streamed_response_is_stored_when_it_completes(pilot):
    events = list(pilot.responses.create(model=MODEL_ID, input=QUESTION, max_output_tokens=12, temperature=0,
                                         stream=True))
    created, done = events[0], events[-1]
    assert created.type == "response.created" and created.response.store is True
    assert done.type == "response.completed" and done.response.store is True
    kept = pilot.responses.retrieve(done.response.id)
    assert kept.output_text == done.response.output_text


def test_an_unknown_or_hostile_response_id_is_404(pilot):
    for response_id in ("resp_doesnotexist", "../../etc/passwd", "x" * 100, "' OR 1=1 --"):
        with pytest.raises(openai.NotFoundError):
            ask(pilot, previous_response_id=response_id)
        with pytest.raises(openai.NotFoundError):
            pilot.responses.retrieve(response_id)
