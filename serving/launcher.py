"""``fabriek serve``: a single-machine Ray head with the dashboard and the fabriek app."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from serving.records import tracing
from serving.config import BUILTIN_SCHEME, PlatformConfig
from serving.config.cpu_lists import cores_of
from serving.config.home import RAY_TOKEN_PATH, fabriek_home
from serving.config.domains import domain_resource

# Where Ray keeps (and, in token mode, creates) the cluster's auth token.

# Start-up on a 2-core CPU machine takes about a minute; a GPU node with a large model
# can take many more to load weights.
READY_TIMEOUT_S = 1800

# Ray Serve starts HAProxy as `haproxy -db -f /tmp/haproxy-serve/<node id>/haproxy.cfg`
# (ray.serve._private.haproxy); the node id also names that node's raylet and workers.
_RAY_HAPROXY_CONFIG = re.compile(r"/haproxy-serve/(?P<node_id>[0-9a-f]{16,})/haproxy\.cfg$")
# Where a port has a command-line flag, the message names it rather than the config field.
_PORT_FLAGS = {"http.port": "--http-port", "grpc.port": "--grpc-port", "local.dashboard_port": "--dashboard-port"}


class PortInUseError(RuntimeError):
    """A port fabriek needs is held by a process that is not a provable leftover of ours."""


@dataclass(frozen=True)
class PortHolder:
    """A process with a TCP socket on a port; ``pid`` None when this user cannot see it."""

    pid: int | None
    cmdline: str


def _say(message: str) -> None:
    print(f"fabriek: {message}", flush=True)


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise KeyboardInterrupt


def serve_locally(config: PlatformConfig) -> int:
    """Start Ray, deploy the app, print ``fabriek ready`` and block until Ctrl-C or SIGTERM.

    Returns:
        The process exit code: 0 after a clean shutdown, 1 if start-up failed.
    """
    # SIGTERM (systemd, Kubernetes, a test harness) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        # Before anything slow: a port held by another process would only fail Ray's start
        # minutes later, as "Address already in use" deep in a Ray log.
        claim_ports(config)
    except (PortInUseError, OSError) as err:
        _say(f"start-up failed: {err}")
        return 1
    builtins = sorted({m.source.removeprefix(BUILTIN_SCHEME) for m in config.models
                       if m.source.startswith(BUILTIN_SCHEME)})
    if builtins:
        from serving.engine.default_model import prepare_builtin_model

        for name in builtins:
            prepare_builtin_model(name)

    import ray
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import bind_power_governor, build_domain_app, route_prefix
    from serving.config.energy_specs import POWER_APP

    http, local = config.http, config.local
    api_url = f"http://{http.host}:{http.port}"
    exit_code = 0
    node_id = None
    try:
        _say("starting a local Ray head")
        # Ray's processes read these at start; they inherit the driver's environment.
        os.environ.update(config.ray_env())
        if tracing.traces_exporter(os.environ) is not None:
            os.environ.setdefault("OTEL_SERVICE_NAME", tracing.DEFAULT_SERVICE_NAME)
        # This one node plays every pool's nodes: it advertises each pool's resource, which
        # the pool's engine deployments require (serving.engine.engines); the CPU binding in the
        # config keeps their engines on separate cores.
        # It also plays each isolation domain's nodes, for the domains' front doors.
        domains = config.domains()
        if not domains:
            raise ValueError("no tenant class uses any pool (`classes` in the config): nothing to serve")
        pool_resources = {pool.ray_resource: 1.0 for pool in config.pools}
        pool_resources.update({domain_resource(d.name): 1.0 for d in domains})
        if local.system_cpus is not None:
            # Every Ray process inherits this; engine replicas move to their pool's cores.
            os.sched_setaffinity(0, cores_of(local.system_cpus))
            _say(f"platform processes on cores {local.system_cpus}; engines on their pools' cores")
        context = ray.init(num_cpus=local.num_cpus, resources=pool_resources, include_dashboard=True,
                           dashboard_host=local.dashboard_host, dashboard_port=local.dashboard_port,
                           namespace="fabriek", log_to_driver=True,
                           _metrics_export_port=local.metrics_export_port)
        # ray.init installs its own SIGTERM handler (dump and die); put ours back.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        node_id = ray.get_runtime_context().get_node_id()
        serve.start(http_options={"host": http.host, "port": http.port},
                    grpc_options=config.grpc.ray_options(),
                    tracing_config=tracing.serve_tracing_config(os.environ))
        for domain in domains:
            # One front door per isolation domain: its own URL prefix and gRPC application.
            _say(f"API base URL:  {api_url}{route_prefix(domain.name)}/v1  "
                 f"({domain.name} domain: {', '.join(sorted(domain.classes))})")
        _say(f"gRPC API:      {http.host}:{config.grpc.port} (fabriek.v1.InferenceService, "
             "serving/protos/fabriek/v1/inference.proto; metadata `application: DOMAIN`)")
        _say(f"Ray dashboard: http://{context.dashboard_url}" if context.dashboard_url
             else "Ray dashboard: disabled")
        _say(f"Ray logs:      {Path(context.address_info['session_dir']) / 'logs'}")
        _say(f"Metrics:       http://127.0.0.1:{local.metrics_export_port}/metrics (Prometheus)")
        _say(f"Traces:        {tracing.describe(os.environ)}")
        _say(f"Ray address:   {context.address_info['gcs_address']} (`ray status --address ...`)")
        for domain in domains:
            _say(f"API keys:      {config.auth.resolved_key_file(domain.name)} "
                 "(`fabriek keys create --tenant TENANT` makes one)")
        legacy = fabriek_home() / "api-keys.json"
        if config.auth.key_file is None and legacy.is_file():
            # Before isolation domains all keys lived in one file; nothing reads it any more.
            _say(f"note: {legacy} is no longer read (keys are kept per domain now); "
                 "make new keys with `fabriek keys create --tenant TENANT`")
        if RAY_TOKEN_PATH.is_file():
            # Ray 2.60 protects a local cluster with a token by default (it can run code).
            _say(f"dashboard token: in {RAY_TOKEN_PATH} (paste it at the dashboard's login)")
        _say("deploying the engines (about a minute for the default model on a CPU)")
        # All domains at once: their engines load side by side.
        serve.run_many([RunTarget(build_domain_app(config, d.name), name=d.name, route_prefix=route_prefix(d.name))
                        for d in domains] + [RunTarget(bind_power_governor(config), name=POWER_APP, route_prefix=None)])
        for domain in domains:
            _wait_until_healthy(f"{api_url}{route_prefix(domain.name)}/health", READY_TIMEOUT_S)
        print("fabriek ready", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("shutting down")
    except Exception as err:  # start-up failed: report it, then clean up below
        _say(f"start-up failed: {type(err).__name__}: {err}")
        exit_code = 1
    finally:
        # Ignore further signals while tearing down, so a second Ctrl-C cannot leave
        # engine processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _shutdown()
        if node_id is not None:
            _stop_orphaned_haproxy(node_id)
    _say("stopped")
    return exit_code


def _shutdown() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _stop_orphaned_haproxy(node_id: str) -> None:
    """Stop this node's HAProxy if Ray left it behind.

    Ray's HAProxy runs in a process group of its own; when every Ray process is signalled
    at once (a `kill` of the whole group), its manager dies before stopping it. Its config
    lives under a directory named after the Ray node, which identifies ours.
    """
    import psutil

    marker = f"haproxy-serve/{node_id}/"
    _stop([p for p in psutil.process_iter(["cmdline"]) if any(marker in part for part in p.info["cmdline"] or [])])


def _stop(processes: list) -> None:
    """SIGTERM the psutil processes, then SIGKILL those still alive after 5 s."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def config_ports(config: PlatformConfig) -> dict[str, tuple[str, int]]:
    """Every TCP port `fabriek serve` binds, by config field: the address and the port."""
    ports = {"http.port": (config.http.host, config.http.port), "grpc.port": (config.http.host, config.grpc.port),
             "local.dashboard_port": (config.local.dashboard_host, config.local.dashboard_port),
             "local.metrics_export_port": ("0.0.0.0", config.local.metrics_export_port)}
    if config.serve.proxy == "haproxy":
        ports.update({"serve.haproxy_stats_port": ("0.0.0.0", config.serve.haproxy_stats_port),
                      "serve.haproxy_metrics_port": ("0.0.0.0", config.serve.haproxy_metrics_port)})
    return ports


def claim_ports(config: PlatformConfig) -> None:
    """Make sure every port of ``config`` is free before Ray starts.

    A port held by a leftover HAProxy of a Ray node that is gone (``fabriek serve`` killed
    with SIGKILL) is freed by stopping that HAProxy; any other holder is left alone.

    Raises:
        PortInUseError: a port is held by anything else; the message names the port, the
            holding process's pid and command line, and the fix.
    """
    problems = []
    for field, (host, port) in config_ports(config).items():
        if is_port_free(host, port):
            continue
        holders = port_holders(port)
        leftovers = [h for h in holders if _orphaned_ray_haproxy(h) is not None]
        if leftovers and len(leftovers) == len(holders):
            _say(f"stopping a leftover HAProxy of a Ray node that is gone, on port {port} ({field}): "
                 + ", ".join(f"pid {h.pid}" for h in leftovers))
            _stop(_processes(h.pid for h in leftovers))
            if is_port_free(host, port):
                continue
            holders = port_holders(port)
        problems.append(_describe_held_port(field, host, port, holders))
    if problems:
        raise PortInUseError("\n".join(problems))


def _processes(pids) -> list:
    """The psutil processes of those ``pids`` that still run."""
    import psutil

    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    return processes


def is_port_free(host: str, port: int) -> bool:
    """Whether a TCP server could bind ``host:port`` now (as servers do, with SO_REUSEADDR).

    Raises:
        OSError: ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise OSError(err.errno, f"cannot bind {host}:{port}: {err.strerror}") from None
    return True


def port_holders(port: int) -> list[PortHolder]:
    """The processes with a TCP socket (IPv4 or IPv6, listening first) on local ``port``.

    Sockets of other users' processes show without a pid unless this runs as root.
    """
    import psutil

    sockets = [c for c in psutil.net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status != psutil.CONN_TIME_WAIT]
    sockets.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
    holders: list[PortHolder] = []
    for pid in dict.fromkeys(c.pid for c in sockets):  # once each, in that order
        if pid is None:
            holders.append(PortHolder(None, ""))
            continue
        try:
            holders.append(PortHolder(pid, " ".join(psutil.Process(pid).cmdline())))
        except psutil.AccessDenied:
            holders.append(PortHolder(pid, "(command line not readable)"))
        except psutil.NoSuchProcess:
            pass
    return holders


def _orphaned_ray_haproxy(holder: PortHolder) -> str | None:
    """The Ray node id if ``holder`` is this user's Ray Serve HAProxy and no other process of
    that node (raylet, workers) is alive any more; otherwise None, and it is not ours to stop."""
    import psutil

    if holder.pid is None:
        return None
    try:
        process = psutil.Process(holder.pid)
        args = process.cmdline()
        if process.name() != "haproxy" or process.uids().real != os.getuid():
            return None
    except psutil.Error:
        return None
    configs = [_RAY_HAPROXY_CONFIG.search(value) for flag, value in zip(args, args[1:]) if flag == "-f"]
    if len(configs) != 1 or configs[0] is None:
        return None
    node_id = configs[0]["node_id"]
    for other in psutil.process_iter(["name", "cmdline"]):
        if other.info["name"] != "haproxy" and any(node_id in arg for arg in other.info["cmdline"] or []):
            return None  # its Ray node still runs: its HAProxy is in use, not left over
    return node_id


def _describe_held_port(field: str, host: str, port: int, holders: list[PortHolder]) -> str:
    fix = f"stop it, or give fabriek another port ({_PORT_FLAGS.get(field, '`' + field + '` in the config')})"
    if not holders:
        return (f"port {port} ({field}) on {host} is in use by a process fabriek cannot see "
                f"(`ss -ltnp 'sport = :{port}'` as root shows it); {fix}")
    named = "; ".join(f"pid {h.pid}: {h.cmdline[:300]}" if h.pid is not None
                      else "a process of another user (run `ss -ltnp` as root to see it)" for h in holders)
    return f"port {port} ({field}) on {host} is in use by {named}; {fix}"


def _wait_until_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not report healthy within {timeout_s:.0f} s")

