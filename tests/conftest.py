"""Fixtures shared by the whole suite: the one fabriek server per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest

# Start-up of the default model on a 2-core CPU machine takes ~1.5 min; allow slack
# for a loaded CI machine.
SERVER_START_TIMEOUT_S = 600


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FabriekServer:
    """A `fabriek serve` process and what it printed."""

    process: subprocess.Popen
    http_port: int
    dashboard_port: int
    lines: list[str] = field(default_factory=list)
    is_ready: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])


def _collect_output(server: FabriekServer, ready: threading.Event) -> None:
    for line in server.process.stdout:
        server.lines.append(line)
        if line.strip() == "fabriek ready":
            server.is_ready = True
            ready.set()
    ready.set()  # the process ended; the waiter checks why


@pytest.fixture(scope="session")
def fabriek_server(tmp_path_factory) -> FabriekServer:
    """`fabriek serve` with the shipped CPU config, started once per session.

    Every port is a free one, so the suite runs beside a `make serve` on the same machine.
    """
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH
    from serving.default_model import prepare_default_model

    prepare_default_model(show_progress=False)
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["serve"].update(haproxy_stats_port=free_port(), haproxy_metrics_port=free_port())
    config_path = tmp_path_factory.mktemp("config") / "platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    server = FabriekServer(
        process=subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path),
             "--http-port", str(http_port := free_port()),
             "--dashboard-port", str(dashboard_port := free_port())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}),
        http_port=http_port, dashboard_port=dashboard_port)
    ready = threading.Event()
    threading.Thread(target=_collect_output, args=(server, ready), daemon=True).start()
    started = time.monotonic()
    ready.wait(SERVER_START_TIMEOUT_S)
    if not server.is_ready:
        _kill_tree(server.process)
        pytest.fail(f"fabriek serve did not become ready in {time.monotonic() - started:.0f} s:\n"
                    f"{server.output()}")
    yield server
    if server.process.poll() is None:
        _kill_tree(server.process)


def _kill_tree(process: subprocess.Popen) -> None:
    """Last resort after a failure: SIGKILL the server and everything it started."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
