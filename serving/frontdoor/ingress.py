"""The relay layout's front door: an ingress deployment of its own, in front of engine replicas
that it reaches over Ray Serve handles.

Used for a domain whose pools serve more than one model behind one base URL (one Serve
application has one ingress, and HAProxy forwards an application's traffic to that
ingress's replicas only), and with Ray's Python proxy; otherwise each engine replica is its
domain's front door (``serving.frontdoor.direct_server``). Every streamed batch crosses
from the engine replica to this one, which costs the CPU ``docs/benchmarks.md`` measures.
"""

from __future__ import annotations

from typing import Mapping

from ray import serve
from ray.serve.handle import DeploymentHandle

from routers import Route
from serving.admission.engine_calls import HandleCalls
from serving.engine.cpu_affinity import place_front_door
from serving.frontdoor.front_door import FrontDoor, FrontDoorSettings


@serve.ingress()
class OpenAIIngress(FrontDoor):
    """The domain's HTTP and gRPC front door as a deployment of its own (``FrontDoor``).

    Args:
        engines: route (pool and model) -> engine deployment, in config order.
        admission_controller: handle of the domain's ``AdmissionController``.
        settings: the domain's front door (``FrontDoorSettings``).
        cores / cpu_nice: where this front-door process runs (``serving.config.domains.FrontDoorPlacement``).
    """

    def __init__(self, engines: Mapping[Route, DeploymentHandle], *, admission_controller: DeploymentHandle,
                 settings: FrontDoorSettings, cores: frozenset[int] | None = None, cpu_nice: int | None = None):
        place_front_door(cores, cpu_nice)
        self._open_front_door(HandleCalls(engines), admission_controller, settings)
