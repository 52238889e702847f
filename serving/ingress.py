"""The OpenAI-compatible HTTP ingress: a Ray Serve deployment running a FastAPI app.

It authenticates the tenant by its API key, validates requests with vLLM's OpenAI
protocol models, has the policy core admit them to an engine deployment of the tenant's
own pool, sets the tenant's engine-side isolation fields and relays the answer. Streamed answers are relayed batch by
batch as the engine produces them (see ``serving.llm_server``); nothing here waits on a
timer, so the ingress adds only the cost of one handle call to time-to-first-token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import AsyncIterator, Mapping

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.generate.base.protocol import StreamOptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard, ModelList
from vllm.utils.gc_utils import freeze_gc_heap

# Ray's workaround for a pydantic bug that leaves unpicklable iterators in chat
# messages; it must run before a request crosses to another actor.
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

from routers import Admission, Rejection, Route, Tenancy, Tenant
from serving.admission_gate import CLIENT_CLOSED, AdmissionGate, Visit
from serving.body_limit import BodySizeLimit
from serving.errors import APIError, error_response, install_error_handlers
from serving.admission_specs import LedgerSpec
from serving.ledger import UsageLedger
from serving.llm_server import Stamped
from serving.metrics import PlatformMetrics
from serving.openai_requests import parse_openai_request
from serving.prompt_tokens import PromptTokenCounter
from serving.readiness import EngineReadiness
from serving.tenant_access import RETRY_AFTER_NOT_READY_S, TenantAccess, as_api_error

logger = logging.getLogger("fabriek.ingress")

OpenAIRequest = ChatCompletionRequest | CompletionRequest

# Response headers naming where a request ran: the pool it was admitted to, and the
# engine replica that answered, as that replica identified itself (serving.llm_server).
POOL_HEADER = "x-fabriek-pool"
REPLICA_HEADER = "x-fabriek-replica"
# The request's id in the usage ledger (and the engine's logs), on answers and refusals.
REQUEST_ID_HEADER = "x-fabriek-request-id"
# Which ingress replica answered (with several, quotas still hold: they are shared).
INGRESS_HEADER = "x-fabriek-ingress"


@serve.ingress()
class OpenAIIngress:
    """HTTP front door: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``.

    Args:
        engines: route (pool and model) -> engine deployment, in config order.
        model_cards: model id -> extra card fields (e.g. ``max_model_len``).
        max_request_bytes: largest accepted request body; larger ones get 413.
        tenancy: tenants and class policies from the platform config.
        key_file / cache_salt_secret_file / key_reload_interval_s: see ``TenantAccess``.
        admission_controller: handle of the shared ``AdmissionController``.
        ledger: where the usage ledger is (its URL is resolved in the replica, whose
            environment may hold it).
        model_dirs: model id -> local directory with its tokenizer (None: not local).
        max_tokens_caps: tenant id -> its ``max_tokens`` cap (the default when a request
            names none), for tenants that have one.
    """

    def __init__(self, engines: Mapping[Route, DeploymentHandle], model_cards: Mapping[str, dict],
                 max_request_bytes: int, *, tenancy: Tenancy, key_file: Path,
                 cache_salt_secret_file: Path, key_reload_interval_s: float = 1.0,
                 admission_controller: DeploymentHandle, ledger: LedgerSpec,
                 model_dirs: Mapping[str, Path | None], max_tokens_caps: Mapping[str, int]):
        # Streaming handles per (route, method), configured once: Ray builds a new handle
        # on every attribute access (`handle.chat` is `handle.options(method_name=...)`).
        self._streaming = {(r, method): getattr(h.options(stream=True), method)
                           for r, h in engines.items() for method in ("chat", "completions")}
        self._readiness = EngineReadiness(engines)
        self._access = TenantAccess(tenancy, engines, key_file=key_file,
                                    cache_salt_secret_file=cache_salt_secret_file,
                                    key_reload_interval_s=key_reload_interval_s)
        self._model_cards = dict(model_cards)
        self._max_request_bytes = max_request_bytes
        self._gate = AdmissionGate(admission_controller, UsageLedger(ledger.resolved_url()),
                                   PlatformMetrics())
        self._prompt_tokens = PromptTokenCounter(model_dirs)
        self._max_tokens_caps = dict(max_tokens_caps)
        self._replica_id = serve.get_replica_context().replica_id.unique_id

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
        tenant = self._access.authenticate(request)  # before the body is even read
        body = await parse_openai_request(request, ChatCompletionRequest)
        try:
            body = _sanitize_chat_completion_request(body)
        except ValueError as err:  # message content pydantic accepted without checking items
            raise APIError(400, f"invalid request body: {err}", param="messages") from None
        return await self._relay(tenant, body, "chat")

    async def completions(self, request: Request) -> Response:
        """OpenAI text completions, streamed (SSE) or not."""
        tenant = self._access.authenticate(request)
        return await self._relay(tenant, await parse_openai_request(request, CompletionRequest), "completions")

    async def models(self, request: Request) -> ModelList:
        """The models the calling tenant may use."""
        tenant = self._access.authenticate(request)
        return ModelList(data=[ModelCard(id=m, owned_by="fabriek", root=m, **self._model_cards[m])
                               for m in sorted(tenant.model_ids) if m in self._model_cards])

    async def health(self) -> JSONResponse:
        """200 when every engine of every pool answers its health probe, else 503."""
        pools: dict[str, dict[str, str]] = {}
        for route, state in self._readiness.status().items():
            pools.setdefault(route.pool, {})[route.model_id] = state
        is_ready = all(s == "ready" for p in pools.values() for s in p.values())
        return JSONResponse({"status": "ok" if is_ready else "starting", "pools": pools},
                            status_code=200 if is_ready else 503)

    async def _relay(self, tenant: Tenant, body: OpenAIRequest, method: str) -> Response:
        request_id = f"fabriek-{uuid.uuid4().hex}"
        try:
            response = await self._admit_and_answer(tenant, body, method, request_id)
        except APIError as err:
            err.headers = {**(err.headers or {}), REQUEST_ID_HEADER: request_id,
                           INGRESS_HEADER: self._replica_id}
            raise
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers[INGRESS_HEADER] = self._replica_id
        return response

    async def _admit_and_answer(self, tenant: Tenant, body: OpenAIRequest, method: str,
                                request_id: str) -> Response:
        try:
            admission = self._access.admit(tenant, body.model, self._readiness.is_ready)
        except APIError as err:
            self._gate.refuse(tenant, body.model, request_id, err.status, _reason_of(err), "http")
            raise
        _apply_tenant_fields(body, admission)
        body.request_id = request_id  # the engine's logs and metrics carry the same id
        route = admission.route
        prompt_tokens = self._count_prompt(route.model_id, body, method)
        max_tokens = self._limit_output(body, tenant, prompt_tokens)
        strip_usage = _request_usage(body)
        visit = await self._gate.enter(admission, request_id, prompt_tokens, max_tokens, "http")
        if isinstance(visit, Rejection):
            raise as_api_error(visit)
        try:
            return await self._answer(body, method, route, visit, strip_usage)
        except BaseException as err:
            self._gate.leave(visit, err.status if isinstance(err, APIError) else CLIENT_CLOSED
                             if isinstance(err, asyncio.CancelledError) else 500)
            raise

    async def _answer(self, body: OpenAIRequest, method: str, route: Route, visit: Visit,
                      strip_usage: bool) -> Response:
        stream: DeploymentResponseGenerator = self._streaming[(route, method)].remote(body)
        try:
            first = await stream.__anext__()
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as err:
            logger.warning("engine %s/%s unavailable: %s", route.pool, route.model_id, type(err).__name__)
            raise APIError(503, f"The model `{route.model_id}` is unavailable; retry shortly.",
                           retry_after_s=RETRY_AFTER_NOT_READY_S) from None
        except StopAsyncIteration:
            raise APIError(500, "the engine returned no response") from None
        except BaseException:
            # The client went away (cancellation) or the call failed: stop the engine too.
            stream.cancel()
            raise
        self._gate.first_token(visit)
        headers = {POOL_HEADER: route.pool}
        if isinstance(first, Stamped):
            headers[REPLICA_HEADER] = f"{first.deployment}#{first.replica_id}"
            first = first.item
        if isinstance(first, list) and first and isinstance(first[0], ErrorResponse):
            first = first[0]  # a streamed request the engine refused before its first token
        if isinstance(first, ErrorResponse):
            self._gate.leave(visit, first.error.code)
            return error_response(first.error.code, first.error.message, param=first.error.param,
                                  headers=headers)
        if not isinstance(first, list):
            # A complete, non-streamed response; serialize once, here.
            usage = first.usage
            self._gate.leave(visit, 200, usage.prompt_tokens if usage else 0,
                             usage.completion_tokens if usage else 0)
            return Response(first.model_dump_json(), media_type="application/json", headers=headers)
        return StreamingResponse(self._server_sent_events(first, stream, visit, strip_usage),
                                 media_type="text/event-stream", headers=headers)

    async def _server_sent_events(self, first: list[str], rest: DeploymentResponseGenerator,
                                  visit: Visit, strip_usage: bool) -> AsyncIterator[str]:
        """Join each engine batch of ``data: ...`` events into one write; end with [DONE].

        The engine is always asked for usage (the ledger needs it); the usage event is
        read from the last batch and dropped unless the client asked for it too."""
        is_done, usage, status = False, None, CLIENT_CLOSED
        try:
            batch = first
            while True:
                if usage is None and any(_USAGE_ONLY in event for event in batch):
                    batch, usage = _take_usage(batch, strip_usage)
                packet = "".join(batch)
                is_done = is_done or packet.rstrip().endswith("data: [DONE]")
                yield packet
                batch = await rest.__anext__()
        except StopAsyncIteration:
            status = 200
            if not is_done:
                yield "data: [DONE]\n\n"
        finally:
            # The client may have gone away mid-stream: stop the engine request too.
            rest.cancel()
            self._gate.leave(visit, status, *(usage or (0, 0)))

    def _count_prompt(self, model_id: str, body: OpenAIRequest, method: str) -> int:
        if method == "chat":
            return self._prompt_tokens.count_chat(model_id, [m if isinstance(m, dict) else dict(m)
                                                             for m in body.messages])
        return self._prompt_tokens.count_completion(model_id, body.prompt)

    def _limit_output(self, body: OpenAIRequest, tenant: Tenant, prompt_tokens: int) -> int:
        """The most tokens the request may generate, for its reservation; a tenant's cap
        becomes the request's ``max_tokens`` when it names none."""
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is not None:
            return asked
        cap = self._max_tokens_caps.get(tenant.id)
        if cap is not None:
            body.max_tokens = cap
            return cap
        max_model_len = self._model_cards.get(body.model, {}).get("max_model_len")
        return max(0, max_model_len - prompt_tokens) if max_model_len else 0


def _apply_tenant_fields(body: OpenAIRequest, admission: Admission) -> None:
    """Overwrite what the engine must know of the tenant; whatever the client sent is ignored.

    ``cache_salt`` keeps the tenant's prefix-cache entries to itself, ``priority`` is its
    class's band, ``user`` names the tenant (for the engine's own accounting).
    """
    body.model = admission.route.model_id
    body.cache_salt = admission.cache_salt
    body.priority = admission.priority
    body.user = admission.tenant.id


# The final usage event of a stream is the one chunk without choices (a cheap substring
# test per event; only that one event is parsed).
_USAGE_ONLY = '"choices":[]'


def _request_usage(body: OpenAIRequest) -> bool:
    """Asks a streamed request for its usage; True when the client did not ask for it."""
    if not body.stream:
        return False
    if body.stream_options is not None and body.stream_options.include_usage:
        return False
    body.stream_options = StreamOptions(include_usage=True,
                                        continuous_usage_stats=getattr(body.stream_options,
                                                                       "continuous_usage_stats", False))
    return True


def _take_usage(batch: list[str], strip: bool) -> tuple[list[str], tuple[int, int] | None]:
    """(the batch without the usage-only event if ``strip``, (prompt, completion) tokens)."""
    for i, event in enumerate(batch):
        if event.startswith("data: {") and _USAGE_ONLY in event:
            chunk = json.loads(event[len("data: "):])
            usage = chunk.get("usage")
            if usage and not chunk.get("choices"):
                kept = batch[:i] + batch[i + 1:] if strip else batch
                return kept, (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return batch, None


def _reason_of(err: APIError) -> str:
    return {404: "model_not_found", 400: "model_required", 403: "no_pool", 503: "pool_unavailable"}.get(
        err.status, str(err.status))
