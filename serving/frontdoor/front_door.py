"""The front door: the OpenAI-compatible HTTP API (FastAPI) and the gRPC API, side by side.

Both protocols call the same ``Gateway``: it authenticates the tenant by its API key,
has the policy core admit the request to an engine of the tenant's own pool, sets the
tenant's engine-side isolation fields and calls the engine. This module only reads
requests and writes answers; ``serving.frontdoor.grpc_service`` does the same for gRPC.

``FrontDoor`` is a mixin of the Serve deployment that HAProxy forwards a domain's traffic
to: the engine replica itself in the direct layout (``serving.frontdoor.direct_server``),
or an ingress deployment that relays to engine replicas (``serving.frontdoor.ingress``).
Streamed answers are written batch by batch as the engine produces them (see
``serving.engine.llm_server``); nothing here waits on a timer.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Mapping

from fastapi import FastAPI
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from ray.llm._internal.serve.core.configs.openai_api_models import EmbeddingCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList
from vllm.utils.gc_utils import freeze_gc_heap

# Ray's workaround for a pydantic bug that leaves unpicklable iterators in chat messages:
# needed before a request crosses to another actor (relay layout), and its refusal of
# malformed content is a check the direct layout keeps too.
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

from routers import Tenancy, Tenant
from routers.quota import QuotaLimits
from routers.request_shape import shown
from serving.frontdoor.body_limit import BodySizeLimit
from serving.config.admission_specs import LedgerSpec
from serving.frontdoor.errors import REQUEST_ID_HEADER, APIError, error_response, install_error_handlers
from serving.admission.engine_calls import EngineCalls
from serving.admission.gateway import EngineAnswer, Gateway, OpenAIRequest
from serving.frontdoor.grpc_service import InferenceService
from serving.frontdoor.stored_responses import Keeper, StoredResponses
from serving.frontdoor.openai_requests import read_json_object, validate_openai_request
from serving.frontdoor.openapi_schema import (completion_route_docs, health_route_docs, install_openapi,
                                              tenant_route_docs)
from serving.admission.stream_usage import USAGE_ONLY, error_status_in, last_usage_event, without_usage
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.admission.token_counter import TokenCounter

# Response headers naming where a request ran: the pool it was admitted to, and the
# engine replica that answered, as that replica identified itself (serving.engine.llm_server).
# The gRPC API sends the same names as trailing metadata.
POOL_HEADER = "x-fabriek-pool"
REPLICA_HEADER = "x-fabriek-replica"
# Which front door replica answered: the engine replica itself in the direct layout, the
# ingress replica in the relay one (with several, quotas still hold: they are shared).
INGRESS_HEADER = "x-fabriek-ingress"
# Joules the engine's meter gave the request (docs/energy.md): a header on a whole answer, a
# comment line before a stream's [DONE] (SSE clients skip comments), gRPC trailing metadata.
# Absent where nothing was measured.
ENERGY_HEADER = "x-fabriek-energy-j"
# A stream cut off by its class's time limit ends with this error event, then [DONE].
_TIMED_OUT_EVENT = ('data: {"error":{"message":"The request exceeded its time limit.",'
                    '"type":"TimeoutError","param":null,"code":504}}\n\n')


@dataclass(frozen=True)
class FrontDoorSettings:
    """What one domain's front door is built from (``serving.app`` binds it).

    Args:
        model_cards: model id -> extra card fields (e.g. ``max_model_len``).
        max_request_bytes: largest accepted request body; larger ones get 413.
        domain: the isolation domain this front door serves (its ledger, its route prefix).
        tenancy: the domain's tenants and class policies (no other domain's).
        key_file / cache_salt_secret_file / key_reload_interval_s: see ``TenantAccess``.
        tokenizer_files: model id -> its ``tokenizer.json`` on this node, for token counting.
        ledger: where the usage ledger is (its URL is resolved in the replica).
        quotas: tenant id -> its quota (caps, and whose prompts to count).
        embedding_models: the model ids served by a pooling runner (``/v1/embeddings``).
    """

    model_cards: Mapping[str, dict]
    max_request_bytes: int
    domain: str
    tenancy: Tenancy
    key_file: Path
    cache_salt_secret_file: Path
    ledger: LedgerSpec
    key_reload_interval_s: float = 1.0
    tokenizer_files: Mapping[str, str] = field(default_factory=dict)
    quotas: Mapping[str, QuotaLimits] = field(default_factory=dict)
    embedding_models: frozenset[str] = frozenset()


class FrontDoor:
    """HTTP front door (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``)
    and gRPC front door (``fabriek.v1.InferenceService``), mixed into a Serve ingress deployment.

    Ray Serve calls the ingress method named after each RPC, so the methods ``Chat`` ...
    ``CountTokens`` below are the gRPC service; they only delegate. The HTTP handlers are
    named ``http_*``: the engine server this is mixed into has ``chat`` and ``completions``
    of its own.
    """

    def _open_front_door(self, engines: EngineCalls, admission_controller: DeploymentHandle,
                         settings: FrontDoorSettings) -> None:
        """Build the gateway in front of ``engines`` (call once, from ``__init__``)."""
        token_counter = TokenCounter(dict(settings.tokenizer_files))
        self._model_cards = dict(settings.model_cards)
        self._gateway = Gateway(engines, domain=settings.domain, tenancy=settings.tenancy,
                                key_file=settings.key_file,
                                cache_salt_secret_file=settings.cache_salt_secret_file,
                                key_reload_interval_s=settings.key_reload_interval_s,
                                admission_controller=admission_controller, ledger=settings.ledger,
                                token_counter=token_counter, quotas=settings.quotas,
                                max_model_lens={m: c.get("max_model_len") for m, c in self._model_cards.items()},
                                embedding_models=settings.embedding_models)
        self._max_request_bytes = settings.max_request_bytes
        self._stored = StoredResponses(settings.tenancy, settings.ledger.resolved_url(settings.domain))
        self._grpc = InferenceService(self._gateway, self._model_cards, token_counter)
        self._replica_id = serve.get_replica_context().replica_id.unique_id

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="fabriek", summary="OpenAI-compatible API of the fabriek AI facility",
                      docs_url="/docs", redoc_url=None)
        install_error_handlers(app)
        app.add_middleware(BodySizeLimit, max_bytes=self._max_request_bytes)
        app.add_api_route("/v1/chat/completions", self.http_chat, methods=["POST"], **completion_route_docs("chat"))
        app.add_api_route("/v1/completions", self.http_completions, methods=["POST"],
                          **completion_route_docs("completions"))
        app.add_api_route("/v1/responses", self.http_responses, methods=["POST"],
                          **completion_route_docs("responses"))
        app.add_api_route("/v1/responses/{response_id}", self.http_stored_response, methods=["GET"],
                          **tenant_route_docs(404))
        app.add_api_route("/v1/responses/{response_id}", self.http_delete_stored_response, methods=["DELETE"],
                          **tenant_route_docs(404))
        app.add_api_route("/v1/embeddings", self.http_embeddings, methods=["POST"],
                          **completion_route_docs("embeddings"))
        app.add_api_route("/v1/models", self.http_models, methods=["GET"], response_model=ModelList,
                          **tenant_route_docs())
        app.add_api_route("/v1/models/{model_id:path}", self.http_model, methods=["GET"], response_model=ModelCard,
                          **tenant_route_docs(404))
        app.add_api_route("/health", self.http_health, methods=["GET"], **health_route_docs())
        install_openapi(app)
        self._gateway.readiness.start()
        # As the engine replica does (serving.engine.llm_server): keep full collections off the
        # import-time heap, which would otherwise stall every stream passing through.
        freeze_gc_heap()
        return app

    def __del__(self) -> None:
        # Ray Serve calls this when it stops the replica gracefully: the usage records still
        # waiting for the ledger's writer thread are committed, not dropped with the process.
        gateway = getattr(self, "_gateway", None)  # absent if __init__ failed
        if gateway is not None:
            gateway.close()
        stored = getattr(self, "_stored", None)
        if stored is not None:
            stored.close()

    # --- HTTP ---------------------------------------------------------------------------

    async def http_chat(self, request: Request) -> Response:
        """OpenAI chat completions, streamed (SSE) or not."""
        return await self._relay(request, ChatCompletionRequest, "chat")

    async def http_completions(self, request: Request) -> Response:
        """OpenAI text completions, streamed (SSE) or not."""
        return await self._relay(request, CompletionRequest, "completions")

    async def http_responses(self, request: Request) -> Response:
        """OpenAI Responses, streamed (SSE) or not; no response is stored."""
        return await self._relay(request, ResponsesRequest, "responses")

    async def http_stored_response(self, response_id: str, request: Request) -> JSONResponse:
        """One of the tenant's stored responses (a class that keeps them); any other id is 404."""
        tenant = await self._gateway.authenticate(request.headers.get("authorization"))
        return JSONResponse(await self._stored.retrieve(tenant, response_id))

    async def http_delete_stored_response(self, response_id: str, request: Request) -> JSONResponse:
        """Delete one of the tenant's stored responses; any other id is 404."""
        tenant = await self._gateway.authenticate(request.headers.get("authorization"))
        return JSONResponse(await self._stored.delete(tenant, response_id))

    async def http_embeddings(self, request: Request) -> Response:
        """OpenAI embeddings of one text or a list of them."""
        return await self._relay(request, EmbeddingCompletionRequest, "embeddings")

    async def http_models(self, request: Request) -> ModelList:
        """The models the calling tenant may use."""
        tenant = await self._gateway.authenticate(request.headers.get("authorization"))
        return ModelList(data=[self._card(tenant, m, base) for m, base in tenant.models_in(self._model_cards)])

    async def http_model(self, model_id: str, request: Request) -> ModelCard:
        """One model the calling tenant may use; any other id is 404, whether it exists or
        not (no tenant learns of another's models or adapters)."""
        tenant = await self._gateway.authenticate(request.headers.get("authorization"))
        for model, base in tenant.models_in(self._model_cards):
            if model == model_id:
                return self._card(tenant, model, base)
        raise APIError(404, f"The model `{shown(model_id)}` does not exist.", param="model")

    def _card(self, tenant: Tenant, model_id: str, base: str | None) -> ModelCard:
        """A model's card; an adapter is the tenant's own, with its base model as ``parent``."""
        if base is None:
            return ModelCard(id=model_id, owned_by="fabriek", root=model_id, **self._model_cards[model_id])
        return ModelCard(id=model_id, owned_by=tenant.id, root=model_id, parent=base, **self._model_cards[base])

    async def http_health(self, request: Request) -> JSONResponse:
        """200 when every engine of this domain's pools answers its health probe, else 503.

        Without a key it says only up or down: which pools and models exist is for the
        domain's tenants (with a valid key: the readiness of its own pools' engines) and
        for operators (the metrics port).
        """
        status = self._gateway.readiness.status()
        is_ready = all(s == "ready" for s in status.values())
        answer: dict = {"status": "ok" if is_ready else "unavailable"}
        if request.headers.get("authorization"):
            tenant = await self._gateway.authenticate(request.headers.get("authorization"))
            pools = self._gateway.pools_of(tenant)
            answer["pools"] = {}
            for route, state in status.items():
                if route.pool in pools and route.model_id in tenant.model_ids:
                    answer["pools"].setdefault(route.pool, {})[route.model_id] = state
        return JSONResponse(answer, status_code=200 if is_ready else 503)

    async def _relay(self, request: Request, model: type[OpenAIRequest], method: str) -> Response:
        tenant = await self._gateway.authenticate(request.headers.get("authorization"))  # before the body
        keeper = None
        try:
            data = await read_json_object(request, self._max_request_bytes)
            stores = method == "responses" and self._stored.stores(tenant)
            max_sequences = self._gateway.max_sequences(tenant, method)
            body, shape = validate_openai_request(data, model, method, max_sequences, stores)
            if stores:  # a continued conversation goes to the engine whole, and is checked whole
                expanded, keeper = await self._stored.prepare(tenant, data)
                if expanded is not data:
                    body, shape = validate_openai_request(expanded, model, method, max_sequences, stores)
            if method == "chat":
                try:
                    body = _sanitize_chat_completion_request(body)
                except ValueError:  # message content pydantic accepted without checking items
                    raise APIError(400, "invalid request body: malformed message content",
                                   param="messages") from None
        except APIError:
            self._gateway.count_refusal(tenant)
            raise
        return await self._answer(tenant, body, method, shape.sequences, keeper)

    async def _answer(self, tenant, body: OpenAIRequest, method: str, sequences: int,
                      keeper: Keeper | None = None) -> Response:
        # The request's lifecycle is one async generator: its `async with` opens the request
        # (first item in hand) and, however the generator ends, settles it. An unstreamed
        # answer ends it here; a stream ends it when the response stops iterating it.
        lifecycle = self._answer_events(tenant, body, method, sequences, keeper)
        answer = await lifecycle.__anext__()
        headers = {POOL_HEADER: answer.route.pool, REQUEST_ID_HEADER: answer.request_id,
                   INGRESS_HEADER: self._replica_id}
        if answer.replica is not None:
            headers[REPLICA_HEADER] = answer.replica
        if answer.error is not None or answer.is_complete:
            await lifecycle.aclose()  # settles the request: its energy is known now
            if answer.energy_j is not None:
                headers[ENERGY_HEADER] = energy_text(answer.energy_j)
            if answer.error is not None:
                error = answer.error.error
                return error_response(error.code, error.message, param=error.param, headers=headers)
            if keeper is not None:
                answer.first.store = True
                await self._stored.keep(keeper, answer.first.model_dump(mode="json", by_alias=True))
            # A complete, non-streamed response; serialize once, here (the Responses API's
            # models have aliased fields, as vLLM's server writes them).
            return Response(answer.first.model_dump_json(by_alias=method == "responses"),
                            media_type="application/json", headers=headers)
        return StreamingResponse(lifecycle, media_type="text/event-stream", headers=headers)

    async def _answer_events(self, tenant, body: OpenAIRequest, method: str, sequences: int,
                             keeper: Keeper | None) -> AsyncIterator:
        """Yields the answer, then (for a stream) its SSE packets; settles it on the way out."""
        async with self._gateway.request(tenant, body, method, "http", sequences) as answer:
            yield answer
            if answer.error is None and not answer.is_complete:
                if method == "responses":
                    keep = None if keeper is None else functools.partial(self._stored.keep, keeper)
                    packets = _response_events(answer, self._gateway.close_energy, keep)
                else:
                    packets = _server_sent_events(answer, self._gateway.close_energy)
                async for packet in packets:
                    yield packet

    # --- gRPC: fabriek.v1.InferenceService (serving/protos/fabriek/v1/inference.proto) ---

    async def Chat(self, request: pb.ChatRequest, grpc_context: RayServegRPCContext) -> pb.ChatResponse:  # noqa: N802
        """RPC ``Chat``: a whole chat answer."""
        return await self._grpc.chat(request, grpc_context)

    async def ChatStream(self, request: pb.ChatRequest, grpc_context: RayServegRPCContext):  # noqa: N802
        """RPC ``ChatStream``: a chat answer, streamed."""
        async for message in self._grpc.chat_stream(request, grpc_context):
            yield message

    async def Complete(self, request: pb.CompletionRequest,  # noqa: N802
                       grpc_context: RayServegRPCContext) -> pb.CompletionResponse:
        """RPC ``Complete``: a whole text completion."""
        return await self._grpc.complete(request, grpc_context)

    async def CompleteStream(self, request: pb.CompletionRequest, grpc_context: RayServegRPCContext):  # noqa: N802
        """RPC ``CompleteStream``: a text completion, streamed."""
        async for message in self._grpc.complete_stream(request, grpc_context):
            yield message

    async def ListModels(self, request: pb.ListModelsRequest,  # noqa: N802
                         grpc_context: RayServegRPCContext) -> pb.ListModelsResponse:
        """RPC ``ListModels``: the models the calling tenant may use."""
        return await self._grpc.list_models(request, grpc_context)

    async def CountTokens(self, request: pb.CountTokensRequest,  # noqa: N802
                          grpc_context: RayServegRPCContext) -> pb.CountTokensResponse:
        """RPC ``CountTokens``: tokens of a text under the model's tokenizer."""
        return await self._grpc.count_tokens(request, grpc_context)

    async def Embed(self, request: pb.EmbedRequest, grpc_context: RayServegRPCContext) -> pb.EmbedResponse:  # noqa: N802
        """RPC ``Embed``: embedding vectors of texts."""
        return await self._grpc.embed(request, grpc_context)


def energy_text(joules: float) -> str:
    """Joules as the header and metadata carry them: enough digits for a token's worth."""
    return f"{joules:.6g}"


async def _server_sent_events(answer: EngineAnswer,
                              close_energy: Callable[[EngineAnswer, int, int], float | None]) -> AsyncIterator[str]:
    """Join each engine batch of ``data: ...`` events into one write; end with [DONE].

    The engine is always asked for usage on every event (the ledger needs it): the final
    usage event is read from the last batch and dropped unless the client asked for it,
    and the running usage is cut out of the other events unless the client asked for that.
    The answer is settled here when the engine's stream ends, also when it ends with an
    error event or past its time limit (charged what it produced); a client that leaves
    first is settled by ``Gateway.request`` from ``answer.progress_event``.

    The usage event comes once vLLM has finished the request: its energy is closed then, and
    written as an SSE comment before ``[DONE]``."""
    is_done, final = False, None
    batch = answer.first
    while True:
        answer.progress_event = last_usage_event(batch) or answer.progress_event
        if final is None and any(USAGE_ONLY in event for event in batch):
            batch, final = _take_usage(batch, answer.strips_usage)
            joules = close_energy(answer, *final)
            if joules is not None:
                batch = _before_done(batch, f": {ENERGY_HEADER}={energy_text(joules)}\n\n")
        if answer.strips_continuous_usage:
            batch = [e if USAGE_ONLY in e else without_usage(e) for e in batch]
        packet = "".join(batch)
        is_done = is_done or packet.rstrip().endswith("data: [DONE]")
        yield packet
        following = await _next_batch(answer)
        if following is None:
            break  # `batch` stays the last one: its error event, if any, is the outcome
        batch = following
        if batch is _TIMED_OUT:
            yield _TIMED_OUT_EVENT + ("" if is_done else "data: [DONE]\n\n")
            return
    if final is not None:
        answer.settle(200, *final)
    else:  # no usage event: the engine failed mid-stream (an error event) or stopped short
        answer.settle(error_status_in(batch) or 500, *answer.produced())
    if not is_done:
        yield "data: [DONE]\n\n"


# The events that end a Responses stream, with the response's usage.
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")
# Events before the end that carry the response object (its `store` flag among the rest).
_RESPONSE_STARTS = ("response.created", "response.in_progress")


async def _response_events(answer: EngineAnswer, close_energy: Callable[[EngineAnswer, int, int], float | None],
                           keep: Callable[[dict], Awaitable[None]] | None = None) -> AsyncIterator[str]:
    """Relay a Responses stream (``event: <type>`` SSE) batch by batch; settle it from its
    last event's usage. A stream that ends early is charged the prompt counted at admission
    and one token per text delta relayed (vLLM sends a delta per generated token).

    ``keep``: stores the completed response (a class that keeps them); the events that carry
    the response object then say ``store: true``."""
    produced, final, status = 0, None, 500
    batch = answer.first
    while True:
        ended = None
        for i, event in enumerate(batch):
            kind = event[len("event: "):event.find("\n")] if event.startswith("event: ") else ""
            if kind.endswith(".delta"):
                produced += 1
                continue
            if kind in _RESPONSE_ENDS or (keep is not None and kind in _RESPONSE_STARTS):
                data = json.loads(event[event.find("data: ") + len("data: "):])
                if keep is not None and isinstance(data.get("response"), dict):
                    data["response"]["store"] = True
                    batch = [*batch[:i], f"event: {kind}\ndata: {json.dumps(data)}\n\n", *batch[i + 1:]]
                if kind in _RESPONSE_ENDS:
                    usage = data.get("response", {}).get("usage") or {}
                    final = (usage.get("input_tokens", 0), usage.get("output_tokens", 0))
                    status = 500 if kind == "response.failed" else 200
                    ended = data.get("response") if kind != "response.failed" else None
        if ended is not None and keep is not None:
            await keep(ended)
        answer.progress_tokens = (answer.counted_prompt_tokens, produced)
        if final is not None and not answer.energy_closed:
            joules = close_energy(answer, *final)
            if joules is not None:
                batch = [*batch, f": {ENERGY_HEADER}={energy_text(joules)}\n\n"]
        yield "".join(batch)
        batch = await _next_batch(answer)
        if batch is None:
            break
        if batch is _TIMED_OUT:
            yield ('event: error\ndata: {"type":"error","code":"504","message":"The request exceeded its time '
                   'limit."}\n\n')
            return
    answer.settle(status, *(final or answer.produced()))


_TIMED_OUT: list[str] = []  # a sentinel of _next_batch (compared by identity)


async def _next_batch(answer: EngineAnswer) -> list[str] | None:
    """The engine's next batch; None at the end; ``_TIMED_OUT`` (the answer settled 504,
    charged what it produced) when the class's time limit cancelled the engine call.

    Raises:
        CancelledError: the client left (``Gateway.request`` settles it).
    """
    try:
        return await answer.rest.__anext__()
    except StopAsyncIteration:
        return None
    except (TaskCancelledError, asyncio.CancelledError):
        if not answer.timed_out:
            raise
        answer.settle(504, *answer.produced())
        return _TIMED_OUT


def _before_done(batch: list[str], event: str) -> list[str]:
    """``batch`` with ``event`` before its ``[DONE]`` (at its end if it has none)."""
    for i, existing in enumerate(batch):
        if existing.startswith("data: [DONE]"):
            return batch[:i] + [event] + batch[i:]
    return [*batch, event]


def _take_usage(batch: list[str], strip: bool) -> tuple[list[str], tuple[int, int]]:
    """(the batch without the usage-only event if ``strip``, (prompt, completion) tokens)."""
    for i, event in enumerate(batch):
        if event.startswith("data: {") and USAGE_ONLY in event:
            usage = json.loads(event[len("data: "):]).get("usage") or {}
            kept = batch[:i] + batch[i + 1:] if strip else batch
            return kept, (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return batch, (0, 0)
