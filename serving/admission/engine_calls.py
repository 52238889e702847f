"""How a front door reaches its engines: over Ray Serve handles, or inside the engine's own process.

Two layouts put the same ``Gateway`` in front of the same engines (``serving.app``):

* **relay**: the front door is an ingress deployment of its own; each request crosses to an
  engine replica over a deployment handle, and every streamed batch crosses back (pickled,
  sent, unpickled) before the ingress writes it to the client.
* **direct**: the engine replica is its domain's front door (HAProxy forwards straight to
  it); the gateway calls the engine in-process, and streamed batches go from vLLM to the
  client's socket in one Python process, with no relay.

Both give the gateway the same two things: a stream per request that can be cancelled from
anywhere (the deadline timer, the client's disconnect), and a health probe per engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol

from ray.serve.handle import DeploymentHandle

from routers import Route

# Engine methods of FabriekLLMServer that answer OpenAI requests.
ENGINE_METHODS = ("chat", "completions", "embeddings", "responses")


class EngineStream(Protocol):
    """One request's answer: an async iterator of items that ``cancel()`` stops (the engine
    aborts the request); safe to cancel at any time, also while an item is awaited."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def __anext__(self) -> Any: ...

    def cancel(self) -> None: ...


class EngineCalls(Protocol):
    """The engines one front door serves."""

    routes: tuple[Route, ...]

    def stream(self, route: Route, method: str, body: Any) -> EngineStream:
        """Start ``method`` (``chat`` or ``completions``) of ``route``'s engine on ``body``."""

    def probes(self) -> Mapping[Route, Callable[[], Awaitable[Any]]]:
        """Route -> a call of its engine's health probe, ``FabriekLLMServer.probe_engine``
        (the awaitable has ``cancel()``)."""

    def energy(self, route: Route, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Joules the engine's meter gives a finished request; None: not measured here."""


class HandleCalls:
    """Engines reached over Ray Serve deployment handles (the relay layout).

    Args:
        engines: route -> engine deployment handle, in config order.
    """

    def __init__(self, engines: Mapping[Route, DeploymentHandle]):
        self.routes = tuple(engines)
        self._engines = dict(engines)
        # Streaming handles per (route, method), configured once: Ray builds a new handle
        # on every attribute access (`handle.chat` is `handle.options(method_name=...)`).
        self._streaming = {(r, method): getattr(h.options(stream=True), method)
                           for r, h in engines.items() for method in ENGINE_METHODS}

    def stream(self, route: Route, method: str, body: Any) -> EngineStream:
        return self._streaming[(route, method)].remote(body)  # DeploymentResponseGenerator

    def probes(self) -> Mapping[Route, Callable[[], Awaitable[Any]]]:
        # The same probe as in-process: one that reaches the engine core, not only the replica.
        return {r: h.probe_engine.remote for r, h in self._engines.items()}

    def energy(self, route: Route, request_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        # The engine's meter is in another process, and a handle call may reach another
        # replica than the one that ran the request: the relay layout meters pools
        # (Prometheus, power caps), not requests.
        return None


class InProcessCalls:
    """The engine of this very process (the direct layout): ``server`` is the replica's
    ``FabriekLLMServer``; no request or batch is pickled or sent anywhere.

    Args:
        route: the pool and model this replica serves.
        server: the replica's engine server (its ``chat``, ``completions`` and ``probe_engine``).
    """

    def __init__(self, route: Route, server: Any):
        self.routes = (route,)
        self._route = route
        self._server = server

    def stream(self, route: Route, method: str, body: Any) -> EngineStream:
        if route != self._route:
            raise KeyError(f"this replica serves {self._route}, not {route}")
        return TaskStream(getattr(self._server, method)(body))

    def probes(self) -> Mapping[Route, Callable[[], Awaitable[Any]]]:
        # The probe reaches the engine core itself (``FabriekLLMServer.probe_engine``).
        return {self._route: lambda: asyncio.ensure_future(self._server.probe_engine())}

    def energy(self, route: Route, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        return self._server.energy_of(request_id, prompt_tokens, completion_tokens)


class RoutedCalls:
    """The direct layout with engines besides its own: this process's engine in-process,
    the domain's other engines (its embedding pools) over handles.

    Args:
        own: the replica's own engine (``InProcessCalls``).
        others: the domain's other engines (``HandleCalls``); their answers are whole
            responses, not streams, so only one message crosses back per request.
    """

    def __init__(self, own: InProcessCalls, others: HandleCalls):
        self.routes = own.routes + others.routes
        self._own, self._others = own, others
        self._owner = {r: own for r in own.routes} | {r: others for r in others.routes}

    def stream(self, route: Route, method: str, body: Any) -> EngineStream:
        return self._owner[route].stream(route, method, body)

    def probes(self) -> Mapping[Route, Callable[[], Awaitable[Any]]]:
        return {**self._own.probes(), **self._others.probes()}

    def energy(self, route: Route, request_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        return self._owner[route].energy(route, request_id, prompt_tokens, completion_tokens)


_END = object()


class TaskStream:
    """Runs an engine call in a task of its own and hands its items over a queue.

    The call's generator is only ever touched by that task, so ``cancel()`` can stop it from
    a timer or another task while the reader waits for an item (an async generator cannot
    be closed while it runs). Cancelling the task cancels vLLM's request generator, which
    aborts the request in the engine.

    Args:
        call: awaits to the engine's async generator (``LLMServer.chat`` and friends).
    """

    def __init__(self, call: Awaitable[AsyncIterator[Any]]):
        self._items: asyncio.Queue = asyncio.Queue()
        self._call = call
        self._task = asyncio.ensure_future(self._pump(call))
        # The end is queued by the task's outcome, so that a task cancelled before it ever
        # ran (and so never reached its own `try`) still ends the reader's wait.
        self._task.add_done_callback(self._finished)

    async def _pump(self, call: Awaitable[AsyncIterator[Any]]) -> None:
        generator = None
        try:
            generator = await call
            async for item in generator:
                self._items.put_nowait(item)
        finally:
            close = getattr(generator, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _finished(self, task: asyncio.Task) -> None:
        close = getattr(self._call, "close", None)
        if close is not None:
            close()  # a call cancelled before it ran was never awaited; a no-op otherwise
        if task.cancelled():
            self._items.put_nowait(asyncio.CancelledError())
        elif task.exception() is not None:
            self._items.put_nowait(task.exception())
        else:
            self._items.put_nowait(_END)

    def __aiter__(self) -> TaskStream:
        return self

    async def __anext__(self) -> Any:
        item = await self._items.get()
        if item is _END:
            self._items.put_nowait(_END)  # a reader that asks again gets the end again
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._items.put_nowait(item)
            raise item
        return item

    def cancel(self) -> None:
        self._task.cancel()
