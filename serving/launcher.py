"""``fabriek serve``: a single-machine Ray head with the dashboard and the fabriek app."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.records import tracing
from serving.config import BUILTIN_SCHEME, PlatformConfig
from serving.config.cpu_lists import cores_of
from serving.config.home import fabriek_home
from serving.config.domains import domain_resource

# Where Ray keeps (and, in token mode, creates) the cluster's auth token.
RAY_TOKEN_PATH = Path.home() / ".ray" / "auth_token"

# Start-up on a 2-core CPU machine takes about a minute; a GPU node with a large model
# can take many more to load weights.
READY_TIMEOUT_S = 1800


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
    if any(m.source.startswith(BUILTIN_SCHEME) for m in config.models):
        from serving.engine.default_model import prepare_default_model

        prepare_default_model()

    import ray
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import build_domain_app, route_prefix

    http, local = config.http, config.local
    api_url = f"http://{http.host}:{http.port}"
    exit_code = 0
    node_id = None
    try:
        _say("starting a local Ray head")
        # Ray's processes read these at start; they inherit the driver's environment.
        os.environ.update(config.serve.ray_env())
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
                        for d in domains])
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
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any(marker in part for part in p.info["cmdline"] or [])]
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


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

