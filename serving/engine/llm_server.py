"""fabriek's engine deployment: Ray Serve LLM's ``LLMServer`` with first-token-first batching.

Ray's ``LLMServer`` groups streamed chunks into batches every
``stream_batching_interval_ms`` (50 ms by default) to cut the number of messages that
cross from the engine replica to the ingress. Its first batch also waits for that
interval, so every streamed request pays up to 50 ms of time-to-first-token: most of the
+48 ms that Ray Serve LLM is reported to add over bare vLLM. Turning batching off
instead sends one message per token, which costs throughput under load (each message
is pickled, sent and unpickled by two Python processes on the way to the client).

``FirstChunkBatcher`` sends the first chunk the moment it exists, then batches the rest
every interval: time-to-first-token of no batching, message count of batching.

Every answer also says which replica produced it: the first item of each ``chat`` and
``completions`` stream arrives wrapped in a ``Stamped`` naming this replica, as Ray Serve
identifies it here, so the ingress can report where a tenant's request really ran.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Generic, TypeVar

from ray import serve
from ray.llm._internal.serve.core.protocol import RawRequestInfo  # not re-exported by ray.serve.llm
from ray.serve.llm import LLMServer
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
from vllm.exceptions import VLLMClientError
from vllm.utils.gc_utils import freeze_gc_heap

from serving.config.energy_specs import GOVERNOR_DEPLOYMENT, POWER_APP
from serving.records import tracing
from serving.engine.cpu_affinity import pin_to_pool_cores, take_pool_niceness
from serving.engine.energy_accountant import EnergyAccountant, vllm_progress
from serving.engine.energy_meter import engine_meter
from serving.engine.energy_sampler import ENERGY_KEY, EngineEnergy, EnergySettings
from serving.engine.lora_adapters import ADAPTERS_KEY, load_adapters

logger = logging.getLogger("fabriek.engine")

# vLLM traces requests only when given an OTLP endpoint (serving.engine.engines does so from the
# same variables); otherwise it would warn about every request that carries a trace context.
_VLLM_TRACES = bool(tracing.vllm_tracing(os.environ)[0])

T = TypeVar("T")


class FirstChunkBatcher(Generic[T]):
    """Re-chunk an async stream: the first item at once, then lists every interval.

    After an interval in which nothing arrived, the next item is again sent at once,
    so a slow stream is never held back; an interval of 0 sends everything eagerly.

    Args:
        source: the stream to read; a background task reads it so that items pile up
            while a batch interval runs.
        interval_s: time between batches after the first one.
    """

    def __init__(self, source: AsyncIterator[T], interval_s: float):
        self._source = source
        self._interval_s = interval_s
        self._items: collections.deque[T] = collections.deque()
        self._arrived = asyncio.Event()  # set when items arrived or the source ended
        self._finished = False
        self._pause: asyncio.Future | None = None  # the interval being waited out, if any

    async def _pump(self) -> None:
        try:
            async for item in self._source:
                self._items.append(item)
                self._arrived.set()
        finally:
            self._finished = True
            self._arrived.set()
            _wake(self._pause)  # the last batch is not held back by an interval

    async def stream(self) -> AsyncGenerator[list[T], None]:
        """Yield non-empty lists of items; raise what the source raised."""
        loop = asyncio.get_running_loop()
        pump = asyncio.create_task(self._pump())
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    yield batch
                if self._finished and not self._items:
                    break
                if self._interval_s > 0 and not self._finished:
                    # One future and one timer per batch (not `wait_for`, which makes and
                    # cancels a task each time: measurable at thousands of batches a second).
                    self._pause = loop.create_future()
                    timer = loop.call_later(self._interval_s, _wake, self._pause)
                    try:
                        await self._pause
                    finally:
                        timer.cancel()
                        self._pause = None
            await pump  # re-raises the source's exception, if any
        finally:
            # A cancelled request (client gone) must stop the engine stream too.
            if not pump.done():
                pump.cancel()


def _wake(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


@dataclass(frozen=True)
class Stamped:
    """The first item of an engine answer and the replica that produced it.

    Args:
        item: what ``LLMServer`` yielded first (a batch of SSE events, a response, an error).
        deployment: the engine deployment, named ``<pool>--...`` by fabriek.
        replica_id: Ray Serve's id of the replica within that deployment.
    """

    item: Any
    deployment: str
    replica_id: str


# experimental_configs key of the engine's own time limit per request (serving.engine.engines).
MAX_REQUEST_S_KEY = "fabriek_max_request_s"


async def stamp_first(stream: AsyncIterator[T], deployment: str, replica_id: str,
                      max_duration_s: float | None = None) -> AsyncGenerator[Any, None]:
    """Yield ``stream`` with its first item wrapped in ``Stamped``.

    Riding on the first item costs no extra message between engine and ingress.

    Args:
        max_duration_s: the longest the engine works on the request. The front door ends
            requests at their class's limit and cancels them here; this bound is for the
            request whose front door died (Ray Serve does not cancel an orphaned call):
            past it, the engine request is aborted.
    """
    loop = asyncio.get_running_loop()
    waiting: asyncio.Task | None = None  # the task awaiting the next item in here, if any
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if waiting is not None:
            waiting.cancel()

    # One timer per request that interrupts only the wait for an item, never the caller
    # between items (`asyncio.timeout_at` per item would reschedule a timer for every one).
    timer = None if max_duration_s is None else loop.call_later(max_duration_s, expire)
    try:
        is_first = True
        iterator = aiter(stream)
        while True:
            if expired:  # it ran out while the caller held the last item
                raise TimeoutError(f"the engine request ran past {max_duration_s} s")
            waiting = asyncio.current_task()
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:
                if not expired:
                    raise
                waiting.uncancel()
                raise TimeoutError(f"the engine request ran past {max_duration_s} s") from None
            finally:
                waiting = None
            yield Stamped(item, deployment, replica_id) if is_first else item
            is_first = False
    finally:
        if timer is not None:
            timer.cancel()
        # A cancelled request must stop the engine stream beneath (see FirstChunkBatcher).
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


class FabriekLLMServer(LLMServer):
    """``LLMServer`` whose streams send their first chunk at once and name their replica."""

    async def start(self) -> None:
        """Pin to the pool's cores, start the engine and load the tenants' adapters it serves,
        then freeze the start-up heap out of the garbage collector."""
        pin_to_pool_cores()  # before vLLM starts its processes: they inherit both
        take_pool_niceness()
        await super().start()
        await load_adapters(self.engine, self._llm_config.experimental_configs.get(ADAPTERS_KEY) or {})
        try:
            self._energy = self._start_energy()
        except Exception:  # metering never keeps an engine from serving: its energy is null
            logger.exception("energy: metering could not start")
            self._energy = None
        # vLLM's own API server does this after start-up; Ray's replica does not. Without
        # it a full collection walks torch's and vLLM's millions of start-up objects and
        # stalls streams for ~300 ms (the TTFT p99 outliers in docs/benchmarks.md).
        freeze_gc_heap()

    def _start_energy(self) -> EngineEnergy | None:
        """Meter this engine's hardware (``serving.engine.energy_sampler``), if configured."""
        settings = self._llm_config.experimental_configs.get(ENERGY_KEY)
        if settings is None:
            return None
        settings = EnergySettings(**settings)
        import ray

        meter, line = engine_meter(settings.accelerator, [int(i) for i in ray.get_gpu_ids()],
                                   counters=settings.counters, powercap_root=Path(settings.powercap_root))
        logger.info("pool %s: %s", settings.pool, line)
        if not meter.counters:
            return None  # nothing to divide: every request's energy is null, at no cost per request
        # Ray's VLLMEngine keeps vLLM's AsyncLLM here (tests/serving/engine/test_private_hooks.py).
        accountant = EnergyAccountant(meter, vllm_progress(self.engine._engine_client), settings.prefill_weight)
        energy = EngineEnergy(accountant, pool=settings.pool,
                              replica_id=serve.get_replica_context().replica_id.unique_id,
                              interval_s=settings.sample_interval_s, report=_GovernorReports())
        energy.start()
        return energy

    def energy_of(self, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Joules this engine's meter gives the finished request ``request_id`` (None: not
        measured). Called once per request, by the front door in this process."""
        energy = getattr(self, "_energy", None)
        return None if energy is None else energy.finish(request_id, prompt_tokens, completion_tokens)

    async def chat(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        """``LLMServer.chat``, its first item stamped with this replica's identity."""
        return self._stamped(await super().chat(request, _with_trace_headers(raw_request_info)))

    async def completions(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        """``LLMServer.completions``, its first item stamped with this replica's identity."""
        return self._stamped(await super().completions(request, _with_trace_headers(raw_request_info)))

    async def embeddings(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        """``LLMServer.embeddings`` (one whole response), stamped with this replica's identity."""
        return self._stamped(await super().embeddings(request, _with_trace_headers(raw_request_info)))

    async def responses(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        """The Responses API by vLLM's own serving object (Ray Serve LLM has no method for it):
        a whole ``ResponsesResponse``, an ``ErrorResponse``, or batches of SSE events
        (``event: <type>`` and its JSON, as vLLM's server writes them), stamped like chat."""
        return self._stamped(self._responses(request))

    async def _responses(self, request) -> AsyncGenerator[Any, None]:
        # Ray's VLLMEngine keeps vLLM's app state here (tests/serving/engine/test_private_hooks.py).
        serving = getattr(self.engine._app_state, "openai_serving_responses", None)
        if serving is None:
            yield ErrorResponse(error=ErrorInfo(message="This model does not serve the Responses API.",
                                                type="NotFoundError", code=404))
            return
        try:
            answer = await serving.create_responses(request, raw_request=None)
        except (ValueError, VLLMClientError) as err:  # a request vLLM refuses (Ray's methods do the same)
            message = str(err.args[0]) if err.args else type(err).__name__
            yield ErrorResponse(error=ErrorInfo(message=message[:200], type="BadRequestError", code=400,
                                                param=getattr(err, "parameter", None)))
            return
        if not isinstance(answer, AsyncGenerator):
            yield answer  # a whole response, or an error
            return
        async for batch in self._batch_output_stream(_responses_events(answer)):
            yield batch

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        """Nothing: a request never loads an adapter. Ray Serve LLM would load one named by
        the client's ``serve_multiplexed_model_id`` header; fabriek's adapters are the
        tenants' own, loaded when the engine starts, and the front door alone names the one a
        request runs with (its owner's ``model``). Without this the header, which any client
        can send, would fail requests (no Ray ``lora_config``) or fetch adapters by name."""

    async def probe_engine(self) -> None:
        """A health probe that reaches vLLM's engine core process and back.

        ``check_health`` only asks whether the engine has already died; a wedged engine
        core (a hung device, a stopped process) still passes it. This also makes a round
        trip to the engine core, which it answers between steps, so a readiness probe with
        a timeout notices a core that no longer steps. Ray Serve's own replica health check
        stays ``check_health``: a stalled core is not a reason to restart the replica.
        """
        await self.check_health()
        # Ray's VLLMEngine keeps vLLM's AsyncLLM here (tests/serving/engine/test_private_hooks.py).
        await self.engine._engine_client.is_sleeping()

    def num_unfinished_requests(self) -> int:
        """Requests vLLM's engine holds right now; an aborted request leaves it at once.

        For operators and the tests: a client that cancels, or whose deadline passes, must
        leave nothing generating here.
        """
        # Ray's VLLMEngine keeps vLLM's AsyncLLM here; vLLM's own count is the ground truth.
        return self.engine._engine_client.get_num_unfinished_requests()

    def _stamped(self, stream: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        context = serve.get_replica_context()
        return stamp_first(stream, context.deployment, context.replica_id.unique_id,
                           self._llm_config.experimental_configs.get(MAX_REQUEST_S_KEY))

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
        # Ray's setting (experimental_configs.stream_batching_interval_ms, 50 ms default).
        return FirstChunkBatcher(generator, self._get_batch_interval_ms() / 1000).stream()


async def _responses_events(events: AsyncIterator[Any]) -> AsyncGenerator[str, None]:
    """vLLM's Responses stream events as server-sent events (vLLM's own router's format)."""
    async for event in events:
        data = event.model_dump_json(indent=None, by_alias=True)
        yield f"event: {getattr(event, 'type', 'unknown')}\ndata: {data}\n\n"


class _GovernorReports:
    """Sends the engine's intervals to the platform's power governor, fire and forget.

    A platform deployed without the governor (a Serve config of its own) loses nothing but
    power caps: the failure is logged once and retried a minute later.
    """

    RETRY_S = 60.0

    def __init__(self):
        self._handle = None
        self._failed_at: float | None = None

    def __call__(self, pool: str, replica_id: str, joules: float | None, seconds: float, running: int) -> None:
        loop_time = asyncio.get_running_loop().time()
        if self._failed_at is not None and loop_time - self._failed_at < self.RETRY_S:
            return
        try:
            if self._handle is None:
                self._handle = serve.get_deployment_handle(GOVERNOR_DEPLOYMENT, app_name=POWER_APP)
            self._handle.report.remote(pool, replica_id, joules, seconds, running)
            self._failed_at = None
        except Exception as err:
            if self._failed_at is None:
                logger.warning("power governor unreachable (%s): power caps do not see pool %s",
                               type(err).__name__, pool)
            self._handle, self._failed_at = None, loop_time


def _with_trace_headers(raw_request_info: RawRequestInfo | None) -> RawRequestInfo | None:
    """The request's headers with the current trace context: vLLM reads ``traceparent`` off
    them, so its request span becomes a child of this replica's span."""
    headers = tracing.trace_headers() if _VLLM_TRACES else {}
    if not headers:
        return raw_request_info
    return RawRequestInfo(headers={**(raw_request_info.headers if raw_request_info else {}), **headers})
