"""The direct layout's front door: the engine replica itself, with no relay between vLLM and
the client.

HAProxy forwards a domain's HTTP and gRPC traffic straight to the replicas of the domain's
engine deployment (Ray Serve direct ingress). Each replica authenticates, validates and
admits requests itself (the same ``Gateway``: the domain's own key file, its admission
controller, its ledger), then calls its own engine in-process; streamed batches go from
vLLM's output to the client's socket within this one Python process. This is Ray Serve
LLM's direct streaming (the LLM server as the HTTP ingress) with fabriek's front door in it.

It fits a domain whose pools serve one chat model in one pool: one Serve application has
one ingress deployment, and HAProxy forwards an application's traffic only to that
ingress's replicas. The domain's embedding engines sit beside it, reached over Serve
handles (an embedding answer is one message, not a stream). A domain with several chat
routes behind its one base URL keeps the relay front door (``serving.frontdoor.ingress``);
``serving.app`` chooses.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig

from routers import Route
from serving.admission.engine_calls import HandleCalls, InProcessCalls, RoutedCalls
from serving.engine.cpu_affinity import renice_process
from serving.engine.llm_server import FabriekLLMServer
from serving.frontdoor.front_door import FrontDoor, FrontDoorSettings


@serve.ingress()
class FrontDoorLLMServer(FrontDoor, FabriekLLMServer):
    """An engine replica that is its domain's HTTP and gRPC front door.

    Args:
        llm_config: the engine's Ray Serve LLM config (``serving.engine.engines``).
        pool: the pool this engine belongs to.
        admission_controller: handle of the domain's ``AdmissionController``.
        front_door: the domain's front door (``FrontDoorSettings``).
        cpu_nice: the front door's niceness (``serving.config.domains.FrontDoorPlacement``): a
            pool without a ``cpu_nice`` of its own still runs its front door at its domain's.
        other_engines: route -> handle of the domain's embedding engines, reached over Serve.
    """

    async def __init__(self, llm_config: LLMConfig, *, pool: str, admission_controller: DeploymentHandle,
                       front_door: FrontDoorSettings, cpu_nice: int | None = None,
                       other_engines: dict[Route, DeploymentHandle] | None = None, **server_kwargs: Any):
        # The engine starts first: the replica takes no request before it is ready (Ray
        # Serve marks it running when this constructor returns).
        await FabriekLLMServer.__init__(self, llm_config, **server_kwargs)
        if cpu_nice is not None:
            renice_process(cpu_nice)  # every thread; the engine core's process keeps the pool's
        own = InProcessCalls(Route(pool, llm_config.model_id), self)
        engines = RoutedCalls(own, HandleCalls(other_engines)) if other_engines else own
        self._open_front_door(engines, admission_controller, front_door)

    async def __del__(self) -> None:
        # Ray Serve awaits this when it stops the replica gracefully: first the usage
        # records still waiting for the ledger are committed, then the engine shuts down.
        FrontDoor.__del__(self)
        await FabriekLLMServer.__del__(self)
