"""End to end: one isolation domain on a real multi-node Ray cluster (tests/serving/multinode_domain.py),
and where Ray's state API says each piece landed: engines and their placement groups on
their own pool's node, the front door on the domain's nodes, nothing of the domain on the head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.config import DEFAULT_CONFIG_PATH
from serving.engine.default_model import builtin_models, prepare_builtin_model

# A second cluster of the government domain (four nodes, two engines) beside the session's two
# clusters took the machine past Ray's memory threshold (95% of 24 GiB), and Ray's memory
# monitor then killed the session's own engines: it runs once that server has stopped.
pytestmark = [pytest.mark.e2e, pytest.mark.after_server]

SCRIPT = Path(__file__).with_name("multinode_domain.py")
DOMAIN = "government"  # two pools (chat, embeddings): two worker nodes


@pytest.fixture(scope="module")
def placement(tmp_path_factory) -> dict:
    for name in builtin_models():
        prepare_builtin_model(name, show_progress=False)
    home = tmp_path_factory.mktemp("multinode")
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["auth"] = {"key_file": str(home / "{domain}-keys.json"),
                      "cache_salt_secret_file": str(home / "{domain}-salt.secret")}
    config["ledger"] = {"url": f"sqlite:///{home / '{domain}-usage.db'}"}
    # Several nodes on one machine: Ray's Python proxy on the head only (HAProxy would bind
    # the same ports on every node).
    config["serve"]["proxy"] = "ray"
    token = home / "ray-token"
    token.write_text(os.urandom(24).hex())
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    environment.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(config), DOMAIN], env=environment,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    [line] = [line for line in done.stdout.splitlines() if line.startswith("PLACEMENT ")]
    return json.loads(line.removeprefix("PLACEMENT "))


def _fabriek_resources(resources: dict) -> set[str]:
    return {r for r in resources if r.startswith(("pool_", "domain_"))}


def test_pool_resources_only_on_worker_nodes(placement):
    nodes = placement["nodes"]
    assert not _fabriek_resources(nodes[placement["head"]]["resources"])
    for pool, node in placement["workers"].items():
        assert not nodes[node]["is_head"]
        assert _fabriek_resources(nodes[node]["resources"]) == {f"pool_{pool}", f"domain_{DOMAIN}"}


def test_every_engine_replica_and_placement_group_on_its_own_pools_node(placement):
    workers = placement["workers"]
    engines = [a for a in placement["actors"] if a["class"].startswith(f"ServeReplica:{DOMAIN}:")
               and "--" in a["class"]]
    assert {a["class"].split(":")[2].split("--")[0] for a in engines} == set(workers)
    for actor in engines:
        pool = actor["class"].split(":")[2].split("--")[0]
        assert actor["node"] == workers[pool], actor
    # Each engine's placement group: every bundle on that pool's node.
    bundles = [b for g in placement["placement_groups"] if g["state"] == "CREATED" for b in g["bundles"]]
    assert bundles
    for bundle in bundles:
        [pool] = [r.removeprefix("pool_") for r in bundle["resources"] if r.startswith("pool_")]
        assert bundle["node"] == workers[pool], bundle


def test_the_front_door_runs_on_the_domains_nodes_and_the_control_plane_on_the_head(placement):
    workers = set(placement["workers"].values())
    front_door = [a for a in placement["actors"] if a["class"] == f"ServeReplica:{DOMAIN}:AdmissionController"
                  or a["class"].startswith(f"ServeReplica:{DOMAIN}:{DOMAIN}--")]
    assert len(front_door) == 2, placement["actors"]  # the engine replica that is the front door, the controller
    assert all(a["node"] in workers for a in front_door), front_door
    [controller] = [a for a in placement["actors"] if a["class"] == "ServeController"]
    assert controller["node"] == placement["head"]
