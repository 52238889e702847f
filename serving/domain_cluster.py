"""One isolation domain's Ray cluster on this machine, run by `fabriek serve` in a process of
its own per domain (``python -m serving.domain_cluster FILE``; the file holds the domain's
config and its ``DomainCluster``, and is removed once read).

A process can be the driver of one Ray cluster only, so the launcher starts one of these per
domain. It is given the domain's cut of the config (``serving.config.domains``): no other
domain's tenants, key file, salt, ledger or Ray token ever reach it. It starts the domain's
Ray head (``serving.local.ray_head``) on the domain's cores, deploys the domain's front door,
engines and power governor into it, prints ``fabriek: DOMAIN domain ready`` once its front
door answers, and on SIGTERM (the launcher's, or the kernel's when the launcher dies) stops
its Serve applications and its head.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.local.console import raise_keyboard_interrupt, say

# The line the launcher waits for, after the domain's name.
READY_MARKER = "domain ready"
# Start-up on a 2-core CPU machine takes about a minute; a GPU node with a large model
# can take many more to load weights.
READY_TIMEOUT_S = 1800


def run(config_path: Path) -> int:
    """Run the domain of the config at ``config_path`` (a domain's cut: one domain) until
    SIGTERM or SIGINT; returns the exit code."""
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    given = json.loads(config_path.read_text())
    config_path.unlink()
    from serving.local.ray_head import enter_cluster_environment

    enter_cluster_environment(given["environment"])
    from serving.config import load_config
    from serving.config.cluster_layout import DomainCluster
    from serving.config.domains import domain_resource
    from serving.local.ray_head import start_head, stop_head
    from serving.local.ports import stop_orphaned_haproxy
    from serving.local.process_tree import descendants, stop_processes
    from serving.records import tracing

    config = load_config(given["config"])
    cluster = DomainCluster.from_json(given["cluster"])
    [domain] = config.domains()
    if cluster.cores is not None:
        # Every process of the domain's cluster inherits this; its engines move to their pools' cores.
        os.sched_setaffinity(0, cluster.cores)
    if tracing.traces_exporter(os.environ) is not None:
        os.environ.setdefault("OTEL_SERVICE_NAME", tracing.DEFAULT_SERVICE_NAME)
    head = None
    node_id = None
    exit_code = 0
    try:
        resources = {pool.ray_resource: 1.0 for pool in config.pools}
        resources[domain_resource(domain.name)] = 1.0
        head = start_head(config, cluster, resources)
        exit_code = _deploy_and_wait(config, cluster, domain.name)
    except KeyboardInterrupt:
        pass
    except Exception as err:  # start-up failed: report it, then clean up below
        say(f"{domain.name} domain: start-up failed: {type(err).__name__}: {err}")
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster_processes = descendants(os.getpid())
        node_id = _shutdown_driver()
        if head is not None:
            stop_head(head)
        if node_id is not None:
            stop_orphaned_haproxy(node_id)
        # What the head's own shutdown left behind (its agents, an engine core).
        stop_processes(cluster_processes)
    return exit_code


def yield_cpu(nice: int) -> None:
    """Give this domain's whole cluster the niceness ``nice`` (``local.cluster_nice``), once
    it serves: any core it shares with another domain then goes to the other domain first.

    The launcher starts each domain's cluster in a session of its own, and Linux with
    autogroup (the default) shares CPU time between sessions by the session's own niceness,
    whatever each process's own: a process niceness of 19 changed nothing (government TTFT
    p99 1.7x beside a commercial flood). So the session's, which every process of the
    cluster shares, Ray's workers and engines included; each process's own where autogroup
    is off. Only once it serves: a cluster at 19 while another domain's engines load did not
    start within Ray's node start-up timeout.
    """
    from serving.local.process_tree import descendants

    autogroup, enabled = Path("/proc/self/autogroup"), Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.exists() and enabled.exists() and enabled.read_text().strip() == "1":
        autogroup.write_text(str(nice))
        return
    for process in [os.getpid(), *(p.pid for p in descendants(os.getpid()))]:
        try:
            os.setpriority(os.PRIO_PROCESS, process, max(nice, os.getpriority(os.PRIO_PROCESS, process)))
        except OSError:  # gone since
            pass


def _deploy_and_wait(config, cluster, domain: str) -> int:
    import ray
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import bind_power_governor, build_domain_app, route_prefix
    from serving.config.energy_specs import POWER_APP
    from serving.records import tracing

    context = ray.init(address=cluster.gcs_address(), namespace="fabriek",
                       log_to_driver=True)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # ray.init installs its own
    say(f"Ray logs:      {Path(context.address_info['session_dir']) / 'logs'} ({domain} domain)")
    serve.start(http_options={"host": config.http.host, "port": cluster.http_port},
                grpc_options={**config.grpc.ray_options(), "port": cluster.grpc_port},
                tracing_config=tracing.serve_tracing_config(os.environ))
    serve.run_many([RunTarget(build_domain_app(config, domain), name=domain, route_prefix=route_prefix(domain)),
                    RunTarget(bind_power_governor(config), name=POWER_APP, route_prefix=None)])
    wait_until_healthy(f"http://{config.http.host}:{cluster.http_port}{route_prefix(domain)}/health",
                       READY_TIMEOUT_S)
    if cluster.nice:
        yield_cpu(cluster.nice)
    say(f"{domain} {READY_MARKER}")
    while True:
        time.sleep(3600)


def wait_until_healthy(url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        TimeoutError: it did not within ``timeout_s``.
    """
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


def _shutdown_driver() -> str | None:
    """Stop the domain's Serve applications and leave its cluster; the node's id, if any."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    return node_id


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
