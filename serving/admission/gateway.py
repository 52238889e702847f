"""The one admission path of both APIs: authenticate, admit, lease, set the tenant's fields,
call the engine, and account for the request when it ends.

The HTTP ingress and the gRPC service differ only in how they read a request and write
an answer; everything that decides who may call what, where it runs, whether its quota
and its pool have room, and what it leaves in the usage ledger happens here: through the
policy core (``routers``) behind ``TenantAccess`` and the ``AdmissionGate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from opentelemetry.trace import Span
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.llm._internal.serve.core.configs.openai_api_models import EmbeddingCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from routers import Admission, Rejection, RejectionReason, Route, Tenancy, Tenant
from routers.quota import QuotaLimits
from serving.records import tracing
from serving.admission.admission_gate import AdmissionGate, Visit, status_of
from serving.admission.engine_calls import EngineCalls, EngineStream
from serving.admission.refusals import CLIENT_CLOSED
from serving.config.admission_specs import LedgerSpec
from serving.records.ledger import UsageLedger
from serving.records.ledger_writer import LedgerWriter
from serving.engine.llm_server import Stamped
from serving.records.metrics import PlatformMetrics
from serving.admission.prompt_tokens import PromptTokenCounter
from serving.admission.readiness import EngineReadiness
from serving.admission.stream_usage import answer_tokens, usage_of
from serving.admission.tenant_access import Refused, TenantAccess
from serving.admission.token_counter import TokenCounter

logger = logging.getLogger("fabriek.gateway")

OpenAIRequest = ChatCompletionRequest | CompletionRequest | EmbeddingCompletionRequest | ResponsesRequest
# Engine methods of FabriekLLMServer that answer OpenAI requests, and their GenAI operation names.
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "responses": "chat"}
# The metric label of a model the domain does not serve: client-chosen strings never
# become label values (each would be a new Prometheus series).
OTHER_MODEL = "other"


@dataclass
class EngineAnswer:
    """The start of an engine's answer, the rest of it still to come, and its outcome.

    The front door reads the answer inside ``Gateway.request`` and says how it ended with
    ``settle``; leaving the ``async with`` block accounts for it whatever happened.

    Args:
        route: the pool and model that serve the request.
        replica: ``<deployment>#<replica id>`` of the engine replica that answered, if it said.
        first: the first item: a complete response (unstreamed), or a batch of SSE events.
        rest: the engine stream; cancelled when the request's block is left.
        error: the engine refused the request (e.g. a prompt longer than the context).
        request_id: the request's id in the usage ledger and the engine.
        strips_usage: the engine was asked for usage that the client did not ask for.
        strips_continuous_usage: the engine was asked for usage on every event (so that a
            stream that ends early is charged what it produced); the client was not.
        sequences: sequences the request runs (``n``, prompt lists).
        progress_event: the last event relayed to the client; the front door sets it per
            batch, and a stream that ends early is charged the usage it carries.
        timed_out: the request ran past its class's time limit and its engine call was cancelled.
    """

    route: Route
    replica: str | None
    first: Any
    rest: EngineStream
    error: ErrorResponse | None = None
    request_id: str = ""
    strips_usage: bool = False
    strips_continuous_usage: bool = False
    sequences: int = 1
    progress_event: str | None = None
    timed_out: bool = False
    status: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    energy_j: float | None = None
    energy_closed: bool = False
    counted_prompt_tokens: int = 0  # the prompt as counted at admission (0: not counted)
    # (prompt, completion) of a stream whose events carry no running usage (the Responses
    # API), as the front door counts them; preferred over ``progress_event``.
    progress_tokens: tuple[int, int] | None = None

    def settle(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Says how the answer ended, for its accounting when the request's block is left.

        Args:
            status: HTTP-style outcome (200, an error status, 499 when the client left).
        """
        self.status, self.prompt_tokens, self.completion_tokens = status, prompt_tokens, completion_tokens

    def produced(self) -> tuple[int, int]:
        """(prompt, completion) tokens of a stream so far, from the last event relayed.

        Usage on an event counts one sequence: a request of several is charged that many
        times the furthest one (its reservation bounds it)."""
        usage = self.progress_tokens or usage_of(self.progress_event)
        if usage is None:
            return 0, 0
        return usage[0], usage[1] * self.sequences

    @property
    def is_complete(self) -> bool:
        """A whole, unstreamed response (not a batch of events, not an error)."""
        return self.error is None and not isinstance(self.first, list)


class Gateway:
    """Tenants, readiness and engines, shared by the HTTP and gRPC front doors.

    Args:
        engines: the front door's engines, reached over handles or in-process
            (``serving.admission.engine_calls``), routes in config order.
        domain: the isolation domain whose front door this is (its ledger).
        tenancy / key_file / cache_salt_secret_file / key_reload_interval_s: see ``TenantAccess``.
        admission_controller: handle of the shared ``AdmissionController``.
        ledger: where the usage ledger is (resolved here, in the replica's environment).
        token_counter: the models' tokenizers on this node.
        quotas: tenant id -> its quota (the same limits the controller enforces); here for
            the ``max_tokens`` cap and to know whose prompts must be counted.
        max_model_lens: model id -> context length, to bound a reservation without ``max_tokens``.
        embedding_models: the models served by a pooling runner (``/v1/embeddings``).
    """

    def __init__(self, engines: EngineCalls, *, domain: str, tenancy: Tenancy, key_file: Path,
                 cache_salt_secret_file: Path, key_reload_interval_s: float,
                 admission_controller: DeploymentHandle, ledger: LedgerSpec, token_counter: TokenCounter,
                 quotas: Mapping[str, QuotaLimits], max_model_lens: Mapping[str, int | None],
                 embedding_models: frozenset[str] = frozenset()):
        self._engines = engines
        self.readiness = EngineReadiness(engines.probes())
        self._tenancy = tenancy
        self._controller = admission_controller
        self._models = frozenset(r.model_id for r in engines.routes)
        # Which models answer which endpoints: embeddings, or chat and completions.
        self._endpoint_models = {"embeddings": frozenset(embedding_models),
                                 "chat": self._models - embedding_models,
                                 "completions": self._models - embedding_models,
                                 "responses": self._models - embedding_models}
        self._access = TenantAccess(tenancy, engines.routes, key_file=key_file,
                                    cache_salt_secret_file=cache_salt_secret_file,
                                    key_reload_interval_s=key_reload_interval_s)
        self._gate = AdmissionGate(admission_controller, LedgerWriter(UsageLedger(ledger.resolved_url(domain))),
                                   PlatformMetrics())
        self._prompt_tokens = PromptTokenCounter(token_counter)
        self._max_tokens_caps = {t: q.max_tokens for t, q in quotas.items() if q.max_tokens is not None}
        # Tokenizing a prompt costs up to milliseconds per request: only for tenants whose
        # token quota or prompt cap needs the count.
        self._counts_prompts = frozenset(t for t, q in quotas.items()
                                         if q.tokens_per_minute is not None or q.max_prompt_tokens is not None)
        self._max_model_lens = dict(max_model_lens)

    def close(self) -> None:
        """Commits the usage records still waiting (the replica is stopping)."""
        self._gate.close()

    def close_energy(self, answer: EngineAnswer, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The answer's joules, once: its engine closes the request's last meter interval.

        A front door that can still tell the client (a stream's last event, gRPC trailing
        metadata) calls this when the engine's answer is complete; ``request`` calls it
        otherwise when the request ends. None: not measured (no counter, or the relay layout).
        """
        if not answer.energy_closed:
            answer.energy_closed = True
            answer.energy_j = self._energy_of(answer.route, answer.request_id, prompt_tokens, completion_tokens)
        return answer.energy_j

    def _energy_of(self, route: Route, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        try:
            return self._engines.energy(route, request_id, prompt_tokens, completion_tokens)
        except Exception:  # the bookkeeping of energy never fails a request
            logger.exception("energy of request %s", request_id)
            return None

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of ``Bearer KEY`` (a first check hashes off the event loop).

        Raises:
            Refused: UNAUTHENTICATED.
        """
        return await self._access.authenticate(authorization)

    def pools_of(self, tenant: Tenant) -> frozenset[str]:
        """The pools the tenant's class may use."""
        return self._tenancy.pools_for(tenant)

    def max_sequences(self, tenant: Tenant, method: str = "chat") -> int:
        """Sequences one request of the tenant may ask for (its class's bound): for
        ``embeddings``, the texts one request may send."""
        policy = self._tenancy.policy_for(tenant)
        return policy.max_embedding_inputs if method == "embeddings" else policy.max_sequences

    def count_refusal(self, tenant: Tenant) -> None:
        """A request of the tenant refused before admission (a field the platform does not
        offer, a bound exceeded) counts against its request rate (fire and forget)."""
        self._controller.count_refusal.remote(tenant.id)

    def admit_without_engine(self, tenant: Tenant, model_id: str | None) -> Admission:
        """Admit a request that needs no engine (token counting): pools and models, not readiness.

        Raises:
            Refused: as ``TenantAccess.admit``, except POOL_UNAVAILABLE.
        """
        # Named or not, a chat model by default (a tenant with one embedding model beside).
        return self._access.admit(tenant, model_id, lambda route: True,
                                  None if model_id else self._endpoint_models["chat"])

    @contextlib.asynccontextmanager
    async def request(self, tenant: Tenant, body: OpenAIRequest, method: str,
                      protocol: str, sequences: int = 1) -> AsyncIterator[EngineAnswer]:
        """Admit ``body`` for ``tenant``, lease room for it, send it to an engine of its pool
        and wait for the first item; the block reads the rest. Leaving the block, however it
        is left (answered, refused by the engine, cancelled, failed), settles the lease, the
        usage record, the metrics and the span exactly once: nothing for a front door to forget.

        Args:
            method: ``chat`` or ``completions``.
            protocol: ``http`` or ``grpc``, for the usage record.
            sequences: sequences the request runs (``routers.request_shape``).

        A stream that ends early (the client left, a gRPC deadline passed, the engine
        failed, the class's time limit ran out) is charged the prompt and the tokens it
        produced, from the last event the front door relayed.

        Raises:
            Refused: the policy refused the request (pool, quota, queue), or its engine is
                unavailable; it carries the request id once the request has a record.
        """
        # The request's span: its admission and the engine call (Ray Serve's handle spans,
        # vLLM's request span) open beneath it; it ends when the request does.
        span = tracing.start_request_span(OPERATIONS[method], body.model, protocol)
        loop = asyncio.get_running_loop()
        limit_s = self._tenancy.policy_for(tenant).max_request_s
        deadline = None if limit_s is None else loop.time() + limit_s
        try:
            with tracing.activated(span):
                answer, visit = await self._start(tenant, body, method, protocol, span, sequences, deadline)
        except Refused as refused:
            tracing.mark_refused(span, str(refused.rejection.reason), status_of(refused.rejection))
            span.end()
            raise
        except BaseException:
            span.end()
            raise
        left_early = False
        # Past the deadline the engine call is cancelled; the front door ends the answer
        # with 504 (DEADLINE_EXCEEDED) and it is charged what it produced.
        timer = None if deadline is None else loop.call_at(deadline, _expire, answer)
        try:
            yield answer
        except (asyncio.CancelledError, GeneratorExit):
            left_early = True  # the client went away (or its deadline passed)
            raise
        except BaseException as err:
            if answer.status is None:
                logger.error("request %s failed mid-answer: %s", answer.request_id, type(err).__name__)
                answer.settle(500, *answer.produced())
            raise
        finally:
            if timer is not None:
                timer.cancel()
            # The engine stops generating for a request nobody reads any more.
            answer.rest.cancel()
            if answer.status is None:
                if answer.is_complete:  # produced in full, sent or not: charged as answered
                    answer.settle(200, *answer_tokens(answer.first))
                elif left_early:
                    answer.settle(CLIENT_CLOSED, *answer.produced())
                else:
                    logger.error("request %s left unsettled by its front door", answer.request_id)
                    answer.settle(500, *answer.produced())
            energy_j = self.close_energy(answer, answer.prompt_tokens, answer.completion_tokens)
            timings = self._gate.leave(visit, answer.status, answer.prompt_tokens, answer.completion_tokens,
                                       energy_j=energy_j)
            if timings is not None:
                tracing.end_request_span(span, status=answer.status, prompt_tokens=answer.prompt_tokens,
                                         completion_tokens=answer.completion_tokens, timings=timings,
                                         replica=answer.replica)

    async def _start(self, tenant: Tenant, body: OpenAIRequest, method: str, protocol: str,
                     span: Span, sequences: int, deadline: float | None) -> tuple[EngineAnswer, Visit]:
        request_id = f"fabriek-{uuid.uuid4().hex}"
        try:
            admission = self._access.admit(tenant, body.model, self.readiness.is_ready,
                                           self._endpoint_models.get(method))
        except Refused as refused:
            self.count_refusal(tenant)
            model_label = body.model if body.model in self._models else OTHER_MODEL
            self._gate.refuse(tenant, body.model, request_id, refused.rejection, protocol, model_label=model_label)
            refused.request_id = request_id
            raise
        apply_tenant_fields(body, admission)
        body.request_id = request_id  # the engine's logs and metrics carry the same id
        route = admission.route
        # A Responses stream has no running usage: what it charges a client that leaves early
        # starts from the prompt counted here.
        prompt_tokens = (self._count_prompt(route.model_id, body, method)
                         if tenant.id in self._counts_prompts or method == "responses" else 0)
        max_tokens = self._limit_output(body, tenant, route.model_id, prompt_tokens) * sequences
        strips_usage, strips_continuous_usage = _ask_for_usage(body)
        tracing.mark_admitted(span, request_id=request_id, pool=route.pool,
                              tenant_class=str(tenant.tenant_class), model=route.model_id,
                              max_tokens=max_tokens)
        with tracing.activated(tracing.start_admission_span(), end_on_exit=True) as admission_span:
            visit = await self._gate.enter(admission, request_id, prompt_tokens, max_tokens, protocol, sequences)
            if isinstance(visit, Rejection):
                tracing.mark_admission(admission_span, refused_for=str(visit.reason))
                raise Refused(visit, request_id)
            tracing.mark_admission(admission_span, queue_s=visit.queue_s)
        try:
            answer = await self._first_item(route, body, method, request_id, deadline)
        except Refused as refused:
            self._gate.leave(visit, status_of(refused.rejection), prompt_tokens or self._count_prompt(
                route.model_id, body, method))
            refused.request_id = request_id
            raise
        except BaseException as err:
            # Before its first token (a client that left an unstreamed answer, a stuck engine):
            # the engine has read its prompt, so the prompt is charged (counted now if it was
            # not counted at admission; only these requests pay for counting it).
            charged = prompt_tokens or self._count_prompt(route.model_id, body, method)
            self._gate.leave(visit, CLIENT_CLOSED if isinstance(err, asyncio.CancelledError) else 500, charged,
                             energy_j=self._energy_of(route, request_id, charged, 0))
            raise
        answer.strips_usage, answer.strips_continuous_usage = strips_usage, strips_continuous_usage
        answer.sequences = sequences
        answer.counted_prompt_tokens = prompt_tokens
        if answer.error is not None:
            answer.settle(answer.error.error.code)
        else:
            self._gate.first_token(visit)
        return answer, visit

    async def _first_item(self, route: Route, body: OpenAIRequest, method: str, request_id: str,
                          deadline: float | None) -> EngineAnswer:
        stream = self._engines.stream(route, method, body)
        try:
            if deadline is None:
                first = await stream.__anext__()
            else:
                first = await asyncio.wait_for(stream.__anext__(), deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            stream.cancel()
            logger.warning("engine %s/%s: no answer to %s within the time limit", route.pool, route.model_id,
                           request_id)
            raise Refused(Rejection(RejectionReason.TIMED_OUT, "time_limit",
                                    f"The model `{route.model_id}` did not answer within this request's "
                                    "time limit.")) from None
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as err:
            logger.warning("engine %s/%s unavailable: %s", route.pool, route.model_id, type(err).__name__)
            raise Refused(Rejection(RejectionReason.POOL_UNAVAILABLE, "engine",
                                    f"The model `{route.model_id}` is unavailable; retry shortly.")) from None
        except StopAsyncIteration:
            raise RuntimeError("the engine returned no response") from None
        except BaseException:
            # The client went away (cancellation) or the call failed: stop the engine too.
            stream.cancel()
            raise
        replica = None
        if isinstance(first, Stamped):
            replica = f"{first.deployment}#{first.replica_id}"
            first = first.item
        if isinstance(first, list) and first and isinstance(first[0], ErrorResponse):
            first = first[0]  # a streamed request the engine refused before its first token
        error = first if isinstance(first, ErrorResponse) else None
        return EngineAnswer(route, replica, first, stream, error, request_id=request_id)

    def _count_prompt(self, model_id: str, body: OpenAIRequest, method: str) -> int:
        if method == "chat":
            return self._prompt_tokens.count_chat(model_id, [m if isinstance(m, dict) else dict(m)
                                                             for m in body.messages])
        if method == "embeddings":
            return self._prompt_tokens.count_completion(model_id, body.input)
        if method == "responses":
            items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else [
                item if isinstance(item, dict) else item.model_dump() for item in body.input]
            if body.instructions:
                items.append({"role": "system", "content": body.instructions})
            return self._prompt_tokens.count_chat(model_id, items)
        return self._prompt_tokens.count_completion(model_id, body.prompt)

    def _limit_output(self, body: OpenAIRequest, tenant: Tenant, model_id: str, prompt_tokens: int) -> int:
        """The most tokens the request may generate, for its reservation; a tenant's cap
        becomes the request's ``max_tokens`` when it names none. An embedding generates none."""
        field = "max_output_tokens" if isinstance(body, ResponsesRequest) else "max_tokens"
        if not hasattr(body, field):
            return 0
        asked = getattr(body, "max_completion_tokens", None) or getattr(body, field)
        if asked is not None:
            return asked
        cap = self._max_tokens_caps.get(tenant.id)
        if cap is not None:
            setattr(body, field, cap)
            return cap
        max_model_len = self._max_model_lens.get(model_id)
        return max(0, max_model_len - prompt_tokens) if max_model_len else 0


def _ask_for_usage(body: OpenAIRequest) -> tuple[bool, bool]:
    """Asks a streamed request for its usage on every event (the ledger needs the final
    usage, and what an early-ended stream produced).

    Returns:
        (the client did not ask for usage: drop the usage event; the client did not ask for
        continuous usage: cut it out of the other events).
    """
    if not getattr(body, "stream", False) or isinstance(body, ResponsesRequest):
        # A Responses stream always ends with its usage (`response.completed`).
        return False, False
    options = body.stream_options
    wants_usage = bool(options is not None and options.include_usage)
    wants_continuous = bool(wants_usage and options.continuous_usage_stats)
    body.stream_options = StreamOptions(include_usage=True, continuous_usage_stats=True)
    return not wants_usage, not wants_continuous


def _expire(answer: EngineAnswer) -> None:
    """The request ran past its time limit: its engine call is cancelled (vLLM aborts it)."""
    answer.timed_out = True
    answer.rest.cancel()


def apply_tenant_fields(body: OpenAIRequest, admission: Admission) -> None:
    """Overwrite what the engine must know of the tenant; whatever the client sent is ignored.

    ``model`` is the route's model, or the tenant's own adapter on it (vLLM's LoRA name);
    ``cache_salt`` keeps the tenant's prefix-cache entries to itself, ``priority`` is its
    class's band, ``user`` names the tenant (for the engine's own accounting).
    """
    body.model = admission.served_model
    body.cache_salt = admission.cache_salt
    body.priority = admission.priority
    body.user = admission.tenant.id
