"""The OpenAI-compatible HTTP ingress: a Ray Serve deployment running a FastAPI app.

It validates requests with vLLM's OpenAI protocol models, picks the engine deployment
of the requested model and relays its answer. Streamed answers are relayed batch by
batch as the engine produces them (see ``serving.llm_server``); nothing here waits on a
timer, so the ingress adds only the cost of one handle call to time-to-first-token.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Mapping

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard, ModelList
from vllm.utils.gc_utils import freeze_gc_heap

# Ray's workaround for a pydantic bug that leaves unpicklable iterators in chat
# messages; it must run before a request crosses to another actor.
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

from serving.body_limit import BodySizeLimit
from serving.errors import APIError, error_response, install_error_handlers
from serving.openai_requests import parse_openai_request
from serving.readiness import EngineReadiness

logger = logging.getLogger("fabriek.ingress")

# How long a client should wait before retrying while an engine is not ready.
_RETRY_AFTER_NOT_READY_S = 5

OpenAIRequest = ChatCompletionRequest | CompletionRequest


@serve.ingress()
class OpenAIIngress:
    """HTTP front door: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``.

    Args:
        engines: model id -> engine deployment serving that model.
        model_cards: model id -> extra card fields (e.g. ``max_model_len``).
        max_request_bytes: largest accepted request body; larger ones get 413.
    """

    def __init__(self, engines: Mapping[str, DeploymentHandle], model_cards: Mapping[str, dict],
                 max_request_bytes: int):
        # Streaming handles per (model, method), configured once: Ray builds a new handle
        # on every attribute access (`handle.chat` is `handle.options(method_name=...)`).
        self._streaming = {(m, method): getattr(h.options(stream=True), method)
                           for m, h in engines.items() for method in ("chat", "completions")}
        self._model_ids = sorted(engines)
        self._readiness = EngineReadiness(engines)
        self._model_cards = dict(model_cards)
        self._max_request_bytes = max_request_bytes

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="fabriek", summary="OpenAI-compatible API of the fabriek AI facility",
                      docs_url="/docs", redoc_url=None)
        install_error_handlers(app)
        app.add_middleware(BodySizeLimit, max_bytes=self._max_request_bytes)
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/models", self.models, methods=["GET"], response_model=ModelList)
        app.add_api_route("/health", self.health, methods=["GET"])
        self._readiness.start()
        # As the engine replica does (serving.llm_server): keep full collections off the
        # import-time heap, which would otherwise stall every stream passing through.
        freeze_gc_heap()
        return app

    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions, streamed (SSE) or not."""
        body = await parse_openai_request(request, ChatCompletionRequest)
        try:
            body = _sanitize_chat_completion_request(body)
        except ValueError as err:  # message content pydantic accepted without checking items
            raise APIError(400, f"invalid request body: {err}", param="messages") from None
        return await self._relay(body, "chat")

    async def completions(self, request: Request) -> Response:
        """OpenAI text completions, streamed (SSE) or not."""
        return await self._relay(await parse_openai_request(request, CompletionRequest), "completions")

    async def models(self) -> ModelList:
        """The models this deployment serves."""
        return ModelList(data=[ModelCard(id=m, owned_by="fabriek", root=m, **card)
                               for m, card in self._model_cards.items()])

    async def health(self) -> JSONResponse:
        """200 when every engine answers its health probe, else 503."""
        status = self._readiness.status()
        is_ready = all(s == "ready" for s in status.values())
        return JSONResponse({"status": "ok" if is_ready else "starting", "models": status},
                            status_code=200 if is_ready else 503)

    def _engine_for(self, model: str | None, method: str) -> tuple[str, DeploymentHandle]:
        if model is None:
            if len(self._model_ids) != 1:
                raise APIError(400, f"`model` is required: this deployment serves {self._model_ids}",
                               param="model")
            model = self._model_ids[0]
        if (model, method) not in self._streaming:
            raise APIError(404, f"The model `{model}` does not exist.", param="model")
        if not self._readiness.is_ready(model):
            raise APIError(503, f"The model `{model}` is not ready yet; retry shortly.",
                           retry_after_s=_RETRY_AFTER_NOT_READY_S)
        return model, self._streaming[(model, method)]

    async def _relay(self, body: OpenAIRequest, method: str) -> Response:
        model, handle = self._engine_for(body.model, method)
        stream: DeploymentResponseGenerator = handle.remote(body)
        try:
            first = await stream.__anext__()
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as err:
            logger.warning("engine for %s unavailable: %s", model, type(err).__name__)
            raise APIError(503, f"The model `{model}` is unavailable; retry shortly.",
                           retry_after_s=_RETRY_AFTER_NOT_READY_S) from None
        except StopAsyncIteration:
            raise APIError(500, "the engine returned no response") from None
        except BaseException:
            # The client went away (cancellation) or the call failed: stop the engine too.
            stream.cancel()
            raise
        if isinstance(first, list) and first and isinstance(first[0], ErrorResponse):
            first = first[0]  # a streamed request the engine refused before its first token
        if isinstance(first, ErrorResponse):
            return error_response(first.error.code, first.error.message, param=first.error.param)
        if not isinstance(first, list):
            # A complete, non-streamed response; serialize once, here.
            return Response(first.model_dump_json(), media_type="application/json")
        return StreamingResponse(_server_sent_events(first, stream), media_type="text/event-stream")


async def _server_sent_events(first: list[str], rest: DeploymentResponseGenerator) -> AsyncIterator[str]:
    """Join each engine batch of ``data: ...`` events into one write; end with [DONE]."""
    is_done = False
    try:
        batch = first
        while True:
            packet = "".join(batch)
            is_done = is_done or packet.rstrip().endswith("data: [DONE]")
            yield packet
            batch = await rest.__anext__()
    except StopAsyncIteration:
        if not is_done:
            yield "data: [DONE]\n\n"
    finally:
        # The client may have gone away mid-stream: stop the engine request too.
        rest.cancel()
