"""A tenant's own LoRA adapter, end to end: the ministry's fine-tune answers as a reference
computed outside vLLM says it must, differs from the base model, and no other tenant (of its
domain or another) can list it, use it or learn that it exists.

The adapter is tests/lora_adapter.py's deterministic low-rank delta on SmolLM2-135M, loaded
by the government engine at start from a local directory (tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest

from serving.engine.default_model import builtin_model_dir
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub
from tests.conftest import DomainStubs, ADAPTER_ID, ADAPTER_TENANT, MODEL_ID, UNLOADABLE_ADAPTER_ID
from tests.serving.test_e2e_apps import client
from tests.serving.test_e2e_hostile import finished_record

pytestmark = pytest.mark.e2e

PROMPT = "The capital of the Netherlands is"
TOKENS = 8
# vLLM runs the engine in bfloat16 and the reference in float32: log-probabilities agree to
# this much, and a greedy choice is only compared where the reference's margin is wider.
LOGPROB_TOLERANCE = 0.3


@pytest.fixture(scope="module")
def ministry(fabriek_server) -> openai.OpenAI:
    return client(fabriek_server, ADAPTER_TENANT)


@pytest.fixture(scope="module")
def reference(fabriek_server) -> dict:
    """The adapter's greedy completion by transformers (a process of its own: no vLLM)."""
    out = subprocess.run([sys.executable, "-m", "tests.lora_adapter", str(builtin_model_dir(MODEL_ID)),
                          str(fabriek_server.adapter_dir), PROMPT, str(TOKENS)],
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def greedy(api: openai.OpenAI, model: str):
    return api.completions.create(model=model, prompt=PROMPT, max_tokens=TOKENS, temperature=0, logprobs=1)


def test_the_adapter_answers_as_the_reference_outside_vllm_says(ministry, reference):
    # The comparison means something only where the reference's greedy choice is clear.
    assert min(reference["margins"]) > LOGPROB_TOLERANCE, reference
    answer = greedy(ministry, ADAPTER_ID)
    assert answer.model == ADAPTER_ID
    assert answer.choices[0].text == reference["text"]
    served = answer.choices[0].logprobs.token_logprobs
    assert len(served) == TOKENS
    assert max(abs(a - b) for a, b in zip(served, reference["logprobs"])) < LOGPROB_TOLERANCE


def test_the_adapter_differs_from_its_base_model(ministry, reference):
    base, adapted = greedy(ministry, MODEL_ID), greedy(ministry, ADAPTER_ID)
    assert base.model == MODEL_ID
    assert base.choices[0].text != adapted.choices[0].text
    # Not only the text: the first token's probability moves by more than the engine's error.
    first_base, first_adapted = base.choices[0].logprobs.token_logprobs[0], adapted.choices[0].logprobs.token_logprobs[0]
    assert abs(first_base - first_adapted) > 2 * LOGPROB_TOLERANCE


def test_the_owner_lists_its_adapter_with_its_base_model(ministry):
    cards = {m.id: m for m in ministry.models.list().data}
    assert set(cards) == {MODEL_ID, ADAPTER_ID, UNLOADABLE_ADAPTER_ID}
    card = ministry.models.retrieve(ADAPTER_ID)
    assert (card.id, card.owned_by, card.parent) == (ADAPTER_ID, ADAPTER_TENANT, MODEL_ID)
    assert card.max_model_len == cards[MODEL_ID].max_model_len
    # The card names no directory or bucket: where an adapter lives is the operator's.
    assert "adapters" not in card.model_dump_json()


@pytest.mark.parametrize("tenant", ["gov-demo", "pilot-demo"])
def test_other_tenants_cannot_list_use_or_detect_the_adapter(fabriek_server, tenant):
    other = client(fabriek_server, tenant)
    assert ADAPTER_ID not in {m.id for m in other.models.list().data}
    refusals = {}
    for model in (ADAPTER_ID, "gov-ministry-nonexistent"):
        with pytest.raises(openai.NotFoundError) as looked_up:
            other.models.retrieve(model)
        with pytest.raises(openai.NotFoundError) as used:
            other.chat.completions.create(model=model, messages=[{"role": "user", "content": "hoi"}], max_tokens=4)
        assert used.value.status_code == 404
        refusals[model] = [json.dumps(e.body).replace(model, "MODEL") for e in (looked_up.value, used.value)]
    # The refusal of a real adapter reads exactly as the refusal of a name that does not exist.
    assert refusals[ADAPTER_ID] == refusals["gov-ministry-nonexistent"]


def test_an_adapter_that_did_not_load_is_refused_never_answered_by_the_base(ministry, fabriek_server):
    with pytest.raises(openai.NotFoundError) as refused:
        ministry.completions.create(model=UNLOADABLE_ADAPTER_ID, prompt=PROMPT, max_tokens=4)
    assert UNLOADABLE_ADAPTER_ID in str(refused.value)
    assert f"adapter {UNLOADABLE_ADAPTER_ID}" in fabriek_server.output(last=100_000)  # the engine said why


def test_the_ledger_names_the_adapter(ministry, fabriek_server):
    since = time.time()
    answer = ministry.chat.completions.with_raw_response.create(
        model=ADAPTER_ID, messages=[{"role": "user", "content": "Wat is een omgevingsvergunning?"}], max_tokens=6)
    record = finished_record(fabriek_server, ADAPTER_TENANT, answer.headers["x-fabriek-request-id"], since=since)
    usage = answer.parse().usage
    assert (record.model, record.pool) == (ADAPTER_ID, "government")
    assert (record.prompt_tokens, record.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)


def test_streamed_chat_with_the_adapter(ministry):
    messages = [{"role": "user", "content": "Noem een provincie."}]
    whole = ministry.chat.completions.create(model=ADAPTER_ID, messages=messages, max_tokens=12, temperature=0)
    chunks = list(ministry.chat.completions.create(model=ADAPTER_ID, messages=messages, max_tokens=12,
                                                   temperature=0, stream=True))
    assert {c.model for c in chunks} == {ADAPTER_ID}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


def test_the_responses_api_runs_the_adapter_and_embeddings_refuse_it(ministry):
    answer = ministry.responses.create(model=ADAPTER_ID, input=PROMPT, max_output_tokens=TOKENS, temperature=0)
    assert answer.model == ADAPTER_ID and answer.usage.output_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        ministry.embeddings.create(model=ADAPTER_ID, input="passage: x")
    assert "does not answer this endpoint" in str(refused.value)


def test_a_multiplexing_header_changes_nothing(fabriek_server, reference):
    """Ray Serve's model-multiplexing header cannot pick an adapter, or break a request."""
    for tenant, model in (("gov-demo", MODEL_ID), (ADAPTER_TENANT, ADAPTER_ID)):
        answer = httpx.post(f"{fabriek_server.base_url(tenant)}/v1/completions", timeout=120,
                            headers={"Authorization": f"Bearer {fabriek_server.keys[tenant]}",
                                     "serve_multiplexed_model_id": ADAPTER_ID},
                            json={"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == model
        assert (answer.json()["choices"][0]["text"] == reference["text"]) == (model == ADAPTER_ID)


# --- gRPC ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stub(fabriek_server) -> DomainStubs:
    stubs = DomainStubs(fabriek_server).wait_until_ready(180)
    yield stubs
    stubs.close()


def test_grpc_completes_with_the_adapter_and_lists_it(stub, fabriek_server, reference):
    metadata = fabriek_server.grpc_metadata(ADAPTER_TENANT)
    response = stub.Complete(pb.CompletionRequest(model=ADAPTER_ID, prompt=PROMPT,
                                                  sampling=pb.SamplingParams(max_tokens=TOKENS, temperature=0)),
                             metadata=metadata, timeout=120)
    assert (response.model, response.text) == (ADAPTER_ID, reference["text"])
    models = {m.id: m.parent for m in stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30).models}
    assert models[ADAPTER_ID] == MODEL_ID and models[MODEL_ID] == ""


def test_grpc_other_tenants_get_not_found(stub, fabriek_server):
    for tenant in ("gov-demo", "pilot-demo"):
        metadata = fabriek_server.grpc_metadata(tenant)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Complete(pb.CompletionRequest(model=ADAPTER_ID, prompt=PROMPT), metadata=metadata, timeout=60)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        listed = stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30).models
        assert ADAPTER_ID not in {m.id for m in listed}
