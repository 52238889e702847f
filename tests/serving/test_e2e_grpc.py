"""End to end over a real gRPC channel: the real `fabriek serve` (HAProxy front end, Ray Serve,
two pools of vLLM CPU engines) and the generated ``fabriek.v1`` client stub, as both demo tenants.

Cancellation and deadlines are checked where they matter, in the engine: the test joins the
server's Ray cluster as a driver and asks the engine deployment for vLLM's own count of
unfinished requests (``FabriekLLMServer.num_unfinished_requests``).
"""

from __future__ import annotations

import functools
import os
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from serving.protos.fabriek.v1 import inference_pb2 as pb
from tests.conftest import DomainStubs
from serving.protos.fabriek.v1.inference_pb2_grpc import InferenceServiceStub

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
QUESTION = [pb.ChatMessage(role=pb.ROLE_USER, content="What is the capital of the Netherlands?")]
POOL_OF = {"gov-demo": "government", "pilot-demo": "commercial"}


@pytest.fixture(scope="module")
def stub(fabriek_server) -> DomainStubs:
    # Generous: an earlier test may have killed the ingress replicas, and their
    # replacements take a while on a busy 2-core machine.
    stubs = DomainStubs(fabriek_server).wait_until_ready(180)
    yield stubs
    stubs.close()


def key(fabriek_server, tenant: str = "gov-demo", **extra: str) -> list[tuple[str, str]]:
    """The tenant's key and the `application` (its domain) that routes the call to its front door."""
    return [*fabriek_server.grpc_metadata(tenant), *extra.items()]


def greedy(max_tokens: int = 24) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0)


def test_list_models(stub, fabriek_server):
    response = stub.ListModels(pb.ListModelsRequest(), metadata=key(fabriek_server), timeout=10)
    assert [(m.id, m.max_model_len) for m in response.models] == [("multilingual-e5-small", 512), (MODEL, 2048)]


@pytest.mark.parametrize("tenant", ["gov-demo", "pilot-demo"])
def test_chat_runs_on_the_tenants_own_pool(stub, fabriek_server, tenant):
    response, call = stub.Chat.with_call(pb.ChatRequest(model=MODEL, messages=QUESTION, sampling=greedy()),
                                         metadata=key(fabriek_server, tenant), timeout=60)
    assert "Amsterdam" in response.content
    assert response.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    trailing = dict(call.trailing_metadata())
    assert trailing["x-fabriek-pool"] == POOL_OF[tenant]
    assert trailing["x-fabriek-replica"].startswith(f"{POOL_OF[tenant]}--{MODEL}#")


def test_streamed_chat_matches_unary(stub, fabriek_server):
    request = pb.ChatRequest(messages=QUESTION, sampling=greedy())  # no model: the tenant's only one
    unary = stub.Chat(request, metadata=key(fabriek_server), timeout=60)
    call = stub.ChatStream(request, metadata=key(fabriek_server), timeout=60)
    messages = list(call)
    assert "".join(m.content_delta for m in messages) == unary.content
    assert len([m for m in messages if m.content_delta]) > 1, "not streamed"
    last = messages[-1]
    assert last.finish_reason == unary.finish_reason
    assert last.usage.completion_tokens == unary.usage.completion_tokens
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
    assert dict(call.trailing_metadata())["x-fabriek-pool"] == "government"


def test_completion_and_streamed_completion(stub, fabriek_server):
    request = pb.CompletionRequest(model=MODEL, prompt="The Netherlands is a country in", sampling=greedy(8))
    unary = stub.Complete(request, metadata=key(fabriek_server, "pilot-demo"), timeout=60)
    assert unary.text.strip() and unary.usage.completion_tokens <= 8
    streamed = list(stub.CompleteStream(request, metadata=key(fabriek_server, "pilot-demo"), timeout=60))
    assert "".join(m.text_delta for m in streamed) == unary.text
    assert streamed[-1].usage.prompt_tokens == unary.usage.prompt_tokens


def test_stop_sequence_and_seed(stub, fabriek_server):
    sampling = pb.SamplingParams(max_tokens=24, temperature=0.8, seed=7, stop=["Amsterdam"])
    request = pb.ChatRequest(model=MODEL, messages=QUESTION, sampling=sampling)
    first, second = (stub.Chat(request, metadata=key(fabriek_server), timeout=60) for _ in range(2))
    assert first.content == second.content
    assert "Amsterdam" not in first.content


def test_count_tokens_matches_the_engines_prompt_tokens(stub, fabriek_server):
    prompt = "Gezellig: the Dutch word for cosy, convivial and nice."
    counted = stub.CountTokens(pb.CountTokensRequest(model=MODEL, text=prompt), metadata=key(fabriek_server),
                               timeout=10)
    completion = stub.Complete(pb.CompletionRequest(model=MODEL, prompt=prompt, sampling=greedy(1)),
                               metadata=key(fabriek_server), timeout=60)
    assert counted.token_count == completion.usage.prompt_tokens > 5


def code_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        result = call(*args, **kwargs)
        if not hasattr(result, "usage") and not hasattr(result, "models") and not hasattr(result, "token_count"):
            list(result)  # a stream: the error comes while reading it
    return raised.value


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer fk_0123456789ab_forged")],
                                      [("authorization", "Basic dXNlcjpwYXNz")]],
                         ids=["no-key", "unknown-key", "not-bearer"])
@pytest.mark.parametrize("rpc", ["Chat", "ChatStream", "ListModels", "CountTokens"])
def test_bad_key_is_unauthenticated(stub, metadata, rpc):
    request = {"Chat": pb.ChatRequest(messages=QUESTION), "ChatStream": pb.ChatRequest(messages=QUESTION),
               "ListModels": pb.ListModelsRequest(), "CountTokens": pb.CountTokensRequest(text="x")}[rpc]
    error = code_of(getattr(stub, rpc), request, metadata=[*metadata, ("application", "government")], timeout=10)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()


@pytest.mark.parametrize("rpc", ["Chat", "CompleteStream", "CountTokens"])
def test_model_not_granted_is_not_found_like_http_404(stub, fabriek_server, rpc):
    request = {"Chat": pb.ChatRequest(model="eurollm-9b", messages=QUESTION),
               "CompleteStream": pb.CompletionRequest(model="eurollm-9b", prompt="x"),
               "CountTokens": pb.CountTokensRequest(model="eurollm-9b", text="x")}[rpc]
    error = code_of(getattr(stub, rpc), request, metadata=key(fabriek_server, "pilot-demo"), timeout=10)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "eurollm-9b" in error.details()


@pytest.mark.parametrize("request_", [
    pb.ChatRequest(model=MODEL),                                                         # no messages
    pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(content="hoi")]),               # role unset
    pb.ChatRequest(model=MODEL, messages=QUESTION, sampling=pb.SamplingParams(top_p=5)),  # engine refuses
    pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="word " * 3000)]),
], ids=["no-messages", "role-unspecified", "top-p-out-of-range", "longer-than-context"])
@pytest.mark.parametrize("rpc", ["Chat", "ChatStream"])
def test_invalid_argument(stub, fabriek_server, request_, rpc):
    error = code_of(getattr(stub, rpc), request_, metadata=key(fabriek_server), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details()


def long_answer() -> pb.ChatRequest:
    # Sampled, so it rambles on: a minute of generation at CPU speed unless aborted.
    return pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(
        role=pb.ROLE_USER, content="Write a very long story about Dutch windmills.")],
        sampling=pb.SamplingParams(max_tokens=1900, temperature=1.0, seed=1))


@pytest.fixture(scope="module")
def commercial_engine(fabriek_server):
    """The commercial pool's engine deployment, reached as a Ray driver of the commercial
    domain's cluster, with that cluster's token."""
    import ray
    from ray import serve
    from ray._raylet import AuthenticationTokenLoader
    # Ray turns token mode on by itself only for clusters it finds, not for an explicit
    # address; this is its own switch (RAY_AUTH_MODE=token plus a refresh of its config).
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    ray.shutdown()  # a no-op unless an earlier test left a Ray instance in this process
    before = {name: os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(fabriek_server.cluster("commercial").token_file)
    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()  # this process may have held another cluster's token
    ray.init(address=fabriek_server.ray_address("commercial"), namespace="fabriek", log_to_driver=False)
    try:
        yield serve.get_deployment_handle(f"commercial--{MODEL}", app_name="commercial")  # the commercial domain's application
    finally:
        ray.shutdown()
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        AuthenticationTokenLoader.instance().reset_cache()


def unfinished(engine) -> int:
    """vLLM's own count of the requests its engine holds."""
    return engine.num_unfinished_requests.remote().result(timeout_s=10)


def seconds_until_idle(engine, timeout_s: float = 10) -> float:
    started = time.monotonic()
    while unfinished(engine) > 0:
        assert time.monotonic() - started < timeout_s, "the engine still generates for a client that left"
        time.sleep(0.05)
    return time.monotonic() - started


def test_cancelled_stream_aborts_the_engine_request(stub, fabriek_server, commercial_engine):
    assert unfinished(commercial_engine) == 0
    call = stub.ChatStream(long_answer(), metadata=key(fabriek_server, "pilot-demo"), timeout=120)
    received = [next(call) for _ in range(3)]
    assert all(not m.usage.completion_tokens for m in received)  # still generating
    assert unfinished(commercial_engine) == 1
    call.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        list(call)
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    # 1900 tokens would take a minute at CPU speed: only an abort empties the engine this fast.
    assert seconds_until_idle(commercial_engine) < 5


@pytest.mark.parametrize("rpc", ["ChatStream", "Chat"])
def test_deadline_exceeded_aborts_the_engine_request(stub, fabriek_server, commercial_engine, rpc):
    assert unfinished(commercial_engine) == 0
    started = time.monotonic()
    error = code_of(getattr(stub, rpc), long_answer(), metadata=key(fabriek_server, "pilot-demo"), timeout=2)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    assert seconds_until_idle(commercial_engine) < 5


def test_server_answers_after_errors_and_aborts(stub, fabriek_server):
    response = stub.Chat(pb.ChatRequest(messages=QUESTION, sampling=greedy(4)), metadata=key(fabriek_server),
                         timeout=60)
    assert response.content


def test_retry_info_is_a_standard_status_detail():
    """What a client reads from UNAVAILABLE / RESOURCE_EXHAUSTED (the ingress tests send them)."""
    from serving.frontdoor.grpc_status import set_error

    class Context:
        def set_code(self, code): self.code = code
        def set_details(self, details): self.details = details
        def set_trailing_metadata(self, metadata): self.metadata = dict(metadata)

    context = Context()
    set_error(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "quota spent", retry_after_s=30)
    status = status_pb2.Status.FromString(context.metadata["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == 30
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert context.metadata["retry-after"] == "30"


def test_example_client_generated_from_the_proto_streams_a_chat(fabriek_server, tmp_path):
    """What a startup does: generate its own client from the proto, then run the example."""
    import subprocess
    import sys
    from pathlib import Path

    from grpc_tools import protoc

    root = Path(__file__).resolve().parents[2]
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/struct.proto
    assert protoc.main(["protoc", f"-I{root / 'serving/protos'}", f"-I{well_known}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(root / "serving/protos/fabriek/v1/inference.proto")]) == 0
    run = functools.partial(
        subprocess.run, [sys.executable, str(root / "examples/grpc_chat.py"), "--target", fabriek_server.grpc_target("commercial"),
                         "--domain", "commercial",
                         # Greedy: a sampled answer may name another city (CI once saw one).
                         "--max-tokens", "24", "--temperature", "0", "What is the capital of the Netherlands?"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    answered = run(env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path),
                        "FABRIEK_API_KEY": fabriek_server.keys["pilot-demo"]})
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert "Amsterdam" in answered.stdout
    assert "served by pool commercial" in answered.stderr
    refused = run(env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "FABRIEK_API_KEY": "fk_forged"})
    assert refused.returncode == 1 and "error UNAUTHENTICATED" in refused.stderr


def test_quota_is_resource_exhausted_with_a_retry_delay(stub, fabriek_server):
    # The same quota as over HTTP: one request per minute for this tenant.
    request = pb.ChatRequest(model=MODEL, messages=QUESTION, sampling=greedy(2))
    stub.Chat(request, metadata=key(fabriek_server, "quota-grpc"), timeout=60)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Chat(request, metadata=key(fabriek_server, "quota-grpc"), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status.FromString(dict(refused.value.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and 30 <= info.retry_delay.seconds <= 60
