"""The gRPC API, ``fabriek.v1.InferenceService``: its RPCs over the shared ``Gateway``.

Ray Serve's gRPC proxy hands each RPC to the ingress method of the same name
(``serving.frontdoor.ingress``), which delegates here with the request message and Ray's
``RayServegRPCContext``. Failures set a status code on that context (``serving.frontdoor.grpc_status``)
and end the call; they are answers, not exceptions. A client that cancels or whose
deadline passes cancels the call here, and the ``finally`` blocks cancel the engine
request, which vLLM then aborts.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, Mapping

import grpc
from ray.exceptions import TaskCancelledError
from ray.serve.grpc_util import RayServegRPCContext

from routers import Tenant
from serving.frontdoor import grpc_messages
from serving.frontdoor.errors import APIError
from serving.admission.refusals import CLIENT_CLOSED
from serving.admission.stream_usage import answer_tokens
from serving.admission.gateway import EngineAnswer, Gateway, OpenAIRequest
from serving.frontdoor.grpc_messages import EngineStreamError, StreamDecoder
from serving.frontdoor.grpc_status import code_for_http_status, set_error, set_refused
from serving.protos.fabriek.v1 import inference_pb2 as pb
from serving.admission.tenant_access import Refused
from serving.admission.token_counter import TokenCounter

# Trailing metadata of a successful call: where it ran (as the HTTP headers x-fabriek-*).
POOL_KEY = "x-fabriek-pool"
REPLICA_KEY = "x-fabriek-replica"
ENERGY_KEY = "x-fabriek-energy-j"  # joules, where measured (as the HTTP header)

StreamMessage = pb.ChatStreamResponse | pb.CompletionStreamResponse
# The request message of each engine method, as the RPCs send it.
REQUEST_MESSAGES = {"chat": pb.ChatRequest, "completions": pb.CompletionRequest, "embeddings": pb.EmbedRequest}


class InferenceService:
    """The RPCs of ``fabriek.v1.InferenceService``.

    Args:
        gateway: the admission path shared with the HTTP API.
        model_cards: model id -> card fields (``max_model_len``).
        token_counter: the models' tokenizers.
    """

    def __init__(self, gateway: Gateway, model_cards: Mapping[str, dict], token_counter: TokenCounter):
        self._gateway = gateway
        self._model_cards = model_cards
        self._token_counter = token_counter

    async def chat(self, request: pb.ChatRequest, context: RayServegRPCContext) -> pb.ChatResponse:
        """A whole chat answer."""
        return await self._unary(request, context, "chat", grpc_messages.chat_request,
                                 grpc_messages.chat_response, pb.ChatResponse)

    async def complete(self, request: pb.CompletionRequest, context: RayServegRPCContext) -> pb.CompletionResponse:
        """A whole text completion."""
        return await self._unary(request, context, "completions", grpc_messages.completion_request,
                                 grpc_messages.completion_response, pb.CompletionResponse)

    async def embed(self, request: pb.EmbedRequest, context: RayServegRPCContext) -> pb.EmbedResponse:
        """Embedding vectors of the request's texts."""
        return await self._unary(request, context, "embeddings", grpc_messages.embed_request,
                                 grpc_messages.embed_response, pb.EmbedResponse)

    def chat_stream(self, request: pb.ChatRequest, context: RayServegRPCContext) -> AsyncIterator[StreamMessage]:
        """A chat answer, streamed batch by batch as the engine produces it."""
        return self._stream(request, context, "chat", grpc_messages.chat_request)

    def complete_stream(self, request: pb.CompletionRequest,
                        context: RayServegRPCContext) -> AsyncIterator[StreamMessage]:
        """A text completion, streamed batch by batch as the engine produces it."""
        return self._stream(request, context, "completions", grpc_messages.completion_request)

    async def list_models(self, request: bytes, context: RayServegRPCContext) -> pb.ListModelsResponse:
        """The models the calling tenant may use."""
        if _decoded(request, pb.ListModelsRequest, context) is None:
            return pb.ListModelsResponse()
        try:
            tenant = await self._authenticate(context)
        except Refused as refused:
            set_refused(context, refused)
            return pb.ListModelsResponse()
        return pb.ListModelsResponse(models=[
            pb.Model(id=m, max_model_len=self._model_cards[base or m].get("max_model_len") or 0, parent=base or "")
            for m, base in tenant.models_in(self._model_cards)])

    async def count_tokens(self, request: bytes, context: RayServegRPCContext) -> pb.CountTokensResponse:
        """Tokens of a text under the model's tokenizer; the tenant must be allowed the model."""
        request = _decoded(request, pb.CountTokensRequest, context)
        if request is None:
            return pb.CountTokensResponse()
        try:
            tenant = await self._authenticate(context)
            model_id = self._gateway.admit_without_engine(tenant, request.model or None).route.model_id
        except Refused as refused:
            set_refused(context, refused)
            return pb.CountTokensResponse()
        if not self._token_counter.can_count(model_id):
            set_error(context, grpc.StatusCode.FAILED_PRECONDITION,
                      f"Token counting is not available for `{model_id}`: its tokenizer is not on this node.")
            return pb.CountTokensResponse()
        return pb.CountTokensResponse(token_count=self._token_counter.count(model_id, request.text))

    async def _authenticate(self, context: RayServegRPCContext) -> Tenant:
        authorization = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        return await self._gateway.authenticate(authorization)

    async def _parse(self, request, context: RayServegRPCContext, method: str,
                     build: Callable[..., tuple], *, stream: bool) -> tuple[Tenant, OpenAIRequest, int] | None:
        """Decode, authenticate, then validate: (tenant, request, sequences), or None (with the
        status set) when refused. A refused request of a known tenant counts against its request rate."""
        request = _decoded(request, REQUEST_MESSAGES[method], context)
        if request is None:
            return None
        try:
            tenant = await self._authenticate(context)
        except Refused as refused:
            set_refused(context, refused)
            return None
        try:
            body, shape = build(request, stream=stream, max_sequences=self._gateway.max_sequences(tenant, method))
        except APIError as err:
            self._gateway.count_refusal(tenant)
            set_error(context, code_for_http_status(err.status), err.message)
            return None
        return tenant, body, shape.sequences

    async def _unary(self, request, context: RayServegRPCContext, method: str, build: Callable[..., OpenAIRequest],
                     convert: Callable, empty: type):
        parsed = await self._parse(request, context, method, build, stream=False)
        if parsed is None:
            return empty()
        try:
            tenant, body, sequences = parsed
            async with self._gateway.request(tenant, body, method, "grpc", sequences) as answer:
                if answer.error is not None:
                    _set_engine_error(context, answer)
                    return empty()
                self._gateway.close_energy(answer, *answer_tokens(answer.first))
                context.set_trailing_metadata(_where(answer))
                return convert(answer.first)
        except Refused as refused:
            set_refused(context, refused)
            return empty()

    async def _stream(self, request, context: RayServegRPCContext, method: str,
                      build: Callable[..., OpenAIRequest]) -> AsyncIterator[StreamMessage]:
        parsed = await self._parse(request, context, method, build, stream=True)
        if parsed is None:
            return
        try:
            # Leaving this block, however the stream ends (done, engine error, client
            # cancelled, deadline passed), settles the request.
            tenant, body, sequences = parsed
            async with self._gateway.request(tenant, body, method, "grpc", sequences) as answer:
                if answer.error is not None:
                    _set_engine_error(context, answer)
                    return
                decoder = StreamDecoder(is_chat=method == "chat")
                try:
                    batch = answer.first
                    while True:
                        message = decoder.decode(batch)
                        if message is not None:
                            yield message
                        try:
                            batch = await answer.rest.__anext__()
                        except StopAsyncIteration:
                            break
                        except TaskCancelledError:  # cancelled by the time limit (else re-raised)
                            if not answer.timed_out:
                                raise
                            answer.settle(504, *decoder.tokens)
                            set_error(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      "The request exceeded its time limit.", metadata=_where(answer))
                            return
                    if not decoder.is_finished:
                        yield decoder.last()
                    self._gateway.close_energy(answer, *decoder.tokens)
                    context.set_trailing_metadata(_where(answer))
                    answer.settle(200, *decoder.tokens)
                except EngineStreamError as err:
                    answer.settle(err.status, *decoder.tokens)
                    set_error(context, code_for_http_status(err.status), err.message, metadata=_where(answer))
                finally:
                    if answer.status is None:  # cancelled: what was produced is still charged
                        answer.settle(CLIENT_CLOSED, *decoder.tokens)
        except Refused as refused:  # only ever from opening the request: nothing was sent yet
            set_refused(context, refused)


def _decoded(request, message_type, context: RayServegRPCContext):
    """The request as ``message_type``: the server hands over raw bytes (``serving.protos.servicer``);
    None, with INVALID_ARGUMENT set, when they do not decode."""
    try:
        return grpc_messages.decode(request, message_type)
    except APIError as err:
        set_error(context, grpc.StatusCode.INVALID_ARGUMENT, err.message)
        return None


def _set_engine_error(context: RayServegRPCContext, answer: EngineAnswer) -> None:
    error = answer.error.error
    set_error(context, code_for_http_status(error.code), error.message, metadata=_where(answer))


def _where(answer: EngineAnswer) -> list[tuple[str, str]]:
    metadata = [(POOL_KEY, answer.route.pool)]
    if answer.replica is not None:
        metadata.append((REPLICA_KEY, answer.replica))
    if answer.energy_j is not None:
        metadata.append((ENERGY_KEY, f"{answer.energy_j:.6g}"))
    return metadata
