"""End to end: however `fabriek serve` is stopped, no process it started outlives it.

Supervisors and scripts stop a service by signalling its whole process group (systemd's
default, `timeout`, a benchmark harness), a terminal's Ctrl-C sends SIGINT to the
foreground group, and some send SIGINT to the launcher alone. SIGTERM to the launcher alone
is the session server's own stop (tests/conftest.py) and tests/serving/test_e2e_domain_users.py;
SIGKILL of the launcher is tests/serving/test_e2e_clusters.py. Each way here starts a
fabriek of its own with one domain and one engine, after the session's server has stopped."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import yaml

from serving.config import DEFAULT_CONFIG_PATH
from serving.engine.default_model import prepare_builtin_model
from tests.conftest import MODEL_ID, free_ports, start_fabriek

pytestmark = [pytest.mark.e2e, pytest.mark.after_server]

# How long the launcher may take to stop everything once signalled (its domains' processes
# get 60 s each to stop their applications and heads).
STOP_BOUND_S = 120
# And how long any process it started may take to follow.
STRAGGLER_BOUND_S = 30
WAYS = {"SIGTERM to its process group": (signal.SIGTERM, True),
        "SIGINT to its process group (Ctrl-C in a terminal)": (signal.SIGINT, True),
        "SIGINT to the launcher alone": (signal.SIGINT, False)}


def _one_domain_config(tmp_path) -> str:
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["models"] = [m for m in config["models"] if m["id"] == MODEL_ID]
    config["pools"] = [p for p in config["pools"] if p["name"] == "commercial"]
    config["classes"] = {"commercial": config["classes"]["commercial"]}
    config["tenants"] = [t for t in config["tenants"] if t["class"] == "commercial"]
    first = free_ports(14)
    config["http"]["port"], config["grpc"]["port"] = first, first + 2
    config["local"].update(gcs_port=first + 4, dashboard_port=first + 6, metrics_export_port=first + 8,
                           serve_port_base=36000, ray_token_file=str(tmp_path / "{domain}" / "ray-token"))
    config["serve"].update(haproxy_stats_port=first + 10, haproxy_metrics_port=first + 12)
    config["auth"] = {"key_file": str(tmp_path / "{domain}" / "api-keys.json"),
                      "cache_salt_secret_file": str(tmp_path / "{domain}" / "salt")}
    config["ledger"] = {"url": f"sqlite:///{tmp_path}/{{domain}}/usage.db"}
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _alive(started: dict[int, float]) -> list[str]:
    """Those of ``started`` (pid: its start time) still running, by command line."""
    left = []
    for pid, created in started.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline())[:150] or process.name())
        except psutil.Error:
            continue
    return left


@pytest.mark.parametrize("way", WAYS)
def test_no_process_outlives_a_stop(way, tmp_path):
    sent, to_group = WAYS[way]
    prepare_builtin_model(MODEL_ID, show_progress=False)
    # A process group of its own, as a terminal's job or a supervisor's service has.
    launcher, lines, ready = start_fabriek(_one_domain_config(tmp_path), {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert ready, "".join(lines[-60:])
        started = {}
        for process in psutil.Process(launcher.pid).children(recursive=True):
            try:
                started[process.pid] = process.create_time()
            except psutil.Error:
                continue
        titles = " ".join(" ".join(psutil.Process(p).cmdline()) for p in started if psutil.pid_exists(p))
        assert "EngineCore" in titles or "VLLM::EngineCore" in titles or "ServeReplica:commercial" in titles, titles[:500]
        assert len(started) >= 8

        if to_group:
            os.killpg(launcher.pid, sent)
        else:
            launcher.send_signal(sent)
        launcher.wait(STOP_BOUND_S)
        deadline = time.monotonic() + STRAGGLER_BOUND_S
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _alive(started), (way, _alive(started))
        assert launcher.returncode == 0, "".join(lines[-30:])
        assert any("fabriek: stopped" in line for line in lines)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
