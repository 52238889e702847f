"""One isolation domain on a real multi-node Ray cluster on this machine, and where each of
its pieces landed, from Ray's state API.

Run as ``python tests/serving/multinode_domain.py PLATFORM_JSON DOMAIN`` with a token of
its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``). It starts Ray's own
``ray.cluster_utils.Cluster``: a head with no pool or domain resource, and one worker node
(a real raylet and object store) per pool of the domain, advertising ``pool_<name>`` and
``domain_<domain>``. It deploys the domain's application and power governor as
`fabriek serve` does, and prints, as JSON, every node's resources and the node of every
actor and placement-group bundle.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve import RunTarget
from ray.util import state

from serving.app import bind_power_governor, build_domain_app
from serving.config import load_config
from serving.config.domains import domain_config, domain_resource, route_prefix
from serving.config.energy_specs import POWER_APP


# Starts the line of the result: Ray logs to the same stdout.
MARKER = "PLACEMENT "


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(platform_json: str, domain: str) -> None:
    config = domain_config(load_config(json.loads(platform_json)), domain)
    os.environ.update(config.ray_env())  # every node's processes inherit the Serve runtime's settings
    # The head runs the dashboard: Ray's state API answers through it.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_port": _free_port(),
        "dashboard_agent_listen_port": _free_port()})
    workers = {}
    for pool in config.pools:
        node = cluster.add_node(num_cpus=4, resources={pool.ray_resource: 1.0, domain_resource(domain): 1.0},
                                dashboard_agent_listen_port=_free_port())
        workers[pool.name] = node.node_id
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="fabriek", log_to_driver=False)
    try:
        # One machine, several nodes: only the head runs Serve's proxy (its port is one).
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": _free_port()})
        serve.run_many([RunTarget(build_domain_app(config, domain), name=domain, route_prefix=route_prefix(domain)),
                        RunTarget(bind_power_governor(config), name=POWER_APP, route_prefix=None)])
        nodes = {n.node_id: {"is_head": n.is_head_node, "resources": n.resources_total}
                 for n in state.list_nodes(detail=True)}
        actors = [{"class": a.class_name, "name": a.name, "node": a.node_id, "state": a.state}
                  for a in state.list_actors(detail=True, limit=1000) if a.state == "ALIVE"]
        groups = [{"name": g.name, "bundles": [{"node": b.get("node_id"), "resources": b.get("unit_resources")}
                                               for b in g.bundles], "state": g.state}
                  for g in state.list_placement_groups(detail=True, limit=1000)]
        print(MARKER + json.dumps({"head": cluster.head_node.node_id, "workers": workers, "nodes": nodes,
                          "actors": actors, "placement_groups": groups}), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
    sys.stdout.flush()
    os._exit(0)
