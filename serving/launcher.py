"""``fabriek serve``: every isolation domain in a Ray cluster of its own, on this machine.

A Ray cluster is no security boundary inside itself, so the government and commercial
domains share no GCS, Serve controller, dashboard, token, proxy or node: each domain runs
in a process of its own (``serving.domain_cluster``) that starts its own Ray head on its
own ports and cores (``serving.config.cluster_layout``) and deploys only its own part of
the config. This process starts them side by side, relays what they print, says
``fabriek ready`` once every domain's front door answers, and stops them all on Ctrl-C or
SIGTERM. Each is tied to this process by the kernel (``PR_SET_PDEATHSIG``), so a hard
kill of the launcher stops every cluster too. A domain whose cluster dies does not take
the others down: they keep serving, and the launcher says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from serving.config import BUILTIN_SCHEME, PlatformConfig
from serving.config.cluster_layout import DomainCluster, local_clusters
from serving.config.domains import domain_config
from serving.config.home import fabriek_home
from serving.domain_cluster import READY_MARKER, READY_TIMEOUT_S
from serving.local.console import raise_keyboard_interrupt, say
from serving.local.ports import PortInUseError, claim_ports
from serving.local.process_tree import descendants, stop_processes
from serving.local.ray_head import cluster_environment, die_with_parent, ensure_token
from serving.local.domain_users import (DomainUser, DomainUserError, check_reach, check_separate, domain_user,
                                        hand_over, home_dir, model_dirs, needed_paths, refuse_object_store_adapters)
from serving.local.startup_code import describe_versions, unexpected_code_pth_files
from serving.records import tracing

# How long a domain's process may take to stop its applications and its Ray head.
STOP_TIMEOUT_S = 60


def serve_locally(config: PlatformConfig) -> int:
    """Start every domain's cluster, print ``fabriek ready`` and block until Ctrl-C or SIGTERM.

    Returns:
        The process exit code: 0 after a clean shutdown, 1 if start-up failed or every
        domain's cluster ended by itself.
    """
    # SIGTERM (systemd, Kubernetes, a test harness) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    say(f"versions:      {describe_versions()}")
    if not _startup_code_allowed(config):
        return 1
    if not config.domains():
        say("start-up failed: no tenant class uses any pool (`classes` in the config): nothing to serve")
        return 1
    try:
        claim_ports(config)
    except (PortInUseError, OSError) as err:
        say(f"start-up failed: {err}")
        return 1
    builtins = sorted({m.source.removeprefix(BUILTIN_SCHEME) for m in config.models
                       if m.source.startswith(BUILTIN_SCHEME)})
    if builtins:
        from serving.engine.default_model import prepare_builtin_model

        for name in builtins:
            prepare_builtin_model(name)

    clusters = local_clusters(config)
    try:
        users = _domain_users(config, clusters)
    except DomainUserError as err:
        say(f"start-up failed: {err}")
        return 1
    _describe(config, clusters)
    children: dict[str, subprocess.Popen] = {}
    known: dict = {}
    exit_code = 0
    try:
        say("starting one Ray cluster per domain and deploying the engines "
             "(about a minute for the default model on a CPU)")
        ready = {c.domain: threading.Event() for c in clusters}
        for cluster in clusters:
            children[cluster.domain] = _start_domain(config, cluster, users.get(cluster.domain))
            threading.Thread(target=_relay, args=(children[cluster.domain], ready[cluster.domain]),
                             daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(event.is_set() for event in ready.values()):
            failed = [d for d, child in children.items() if child.poll() is not None]
            if failed:
                raise RuntimeError(f"the {', '.join(failed)} domain's cluster did not start (see above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every domain was ready within {READY_TIMEOUT_S} s")
            time.sleep(0.2)
        print("fabriek ready", flush=True)
        exit_code = _watch(children, known)
    except KeyboardInterrupt:
        say("shutting down")
    except Exception as err:  # start-up failed: report it, then clean up below
        say(f"start-up failed: {type(err).__name__}: {err}")
        exit_code = 1
    finally:
        # Ignore further signals while tearing down, so a second Ctrl-C cannot leave
        # engine processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(children, known)
    say("stopped")
    return exit_code


def _startup_code_allowed(config: PlatformConfig) -> bool:
    """Report each `.pth` file that runs code unasked (``serving.local.startup_code``);
    False when the config refuses to start beside one."""
    unexpected = unexpected_code_pth_files()
    refuse = config.local.unknown_pth_files == "refuse"
    for pth in unexpected:
        say(f"{'start-up refused' if refuse else 'warning'}: {pth.describe()}")
    if unexpected and refuse:
        say("remove it (or reinstall from the lock: `make install`), or set "
            "`local.unknown_pth_files: warn` to start anyway")
        return False
    return True


def _describe(config: PlatformConfig, clusters: list[DomainCluster]) -> None:
    """Print where each domain answers, before the slow part starts."""
    classes = {d.name: ", ".join(sorted(d.classes)) for d in config.domains()}
    host = config.http.host
    for cluster in clusters:
        name = cluster.domain
        say(f"API base URL:  http://{host}:{cluster.http_port}/{name}/v1  ({name} domain: {classes[name]})")
    for cluster in clusters:
        name = cluster.domain
        say(f"gRPC API:      {host}:{cluster.grpc_port} ({name} domain; fabriek.v1.InferenceService, "
             f"serving/protos/fabriek/v1/inference.proto; metadata `application: {name}`)")
    for cluster in clusters:
        say(f"Ray dashboard: http://{config.local.dashboard_host}:{cluster.dashboard_port} ({cluster.domain} domain)")
    for cluster in clusters:
        say(f"Ray address:   {cluster.gcs_address()} ({cluster.domain} domain; "
             f"`RAY_AUTH_TOKEN_PATH={cluster.token_file} ray status --address ...`)")
    for cluster in clusters:
        say(f"Ray token:     {cluster.token_file} ({cluster.domain} domain's cluster only; "
             "paste it at its dashboard's login)")
    for cluster in clusters:
        say(f"Metrics:       http://127.0.0.1:{cluster.metrics_export_port}/metrics "
             f"({cluster.domain} domain; Prometheus)")
    say(f"Traces:        {tracing.describe(os.environ)}")
    for cluster in clusters:
        say(f"API keys:      {config.auth.resolved_key_file(cluster.domain)} "
             "(`fabriek keys create --tenant TENANT` makes one)")
    legacy = fabriek_home() / "api-keys.json"
    if config.auth.key_file is None and legacy.is_file():
        # Before isolation domains all keys lived in one file; nothing reads it any more.
        say(f"note: {legacy} is no longer read (keys are kept per domain now); "
             "make new keys with `fabriek keys create --tenant TENANT`")


def _domain_users(config: PlatformConfig, clusters: list[DomainCluster]) -> dict[str, DomainUser]:
    """Each domain's own Unix user (``local.run_as``), its files handed over and what it
    must read checked; empty when the config sets none.

    Raises:
        DomainUserError: not root, a directory two domains share, or something the user
            cannot reach (the message names it).
    """
    if config.local.run_as is None:
        return {}
    if os.geteuid() != 0:
        raise DomainUserError("local.run_as needs `fabriek serve` started as root (it starts each domain "
                              "as its own user); start it as root, or remove local.run_as")
    check_separate(config, clusters)
    users = {}
    for cluster in clusters:
        cut = domain_config(config, cluster.domain)
        refuse_object_store_adapters(cut)
        user = domain_user(cluster.user)
        # Checked before anything is handed over: a refusal leaves every file as it was.
        check_reach(user, needed_paths(config, cluster, model_dirs(cut)))
        ensure_token(cluster.token_file)
        hand_over(config, cluster, user)
        home = home_dir(cluster)
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, user.uid, user.gid)
        users[cluster.domain] = user
    return users


def _start_domain(config: PlatformConfig, cluster: DomainCluster, user: DomainUser | None) -> subprocess.Popen:
    """Start the process of one domain's cluster, handing it only the domain's cut of the
    config; as the domain's own user where it has one."""
    ensure_token(cluster.token_file)
    cluster.temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    given = {"config": domain_config(config, cluster.domain).model_dump(mode="json", by_alias=True, exclude_none=True),
             "cluster": cluster.to_json(), "environment": cluster_environment(config, cluster)}
    fd, path = tempfile.mkstemp(prefix="domain-", suffix=".json", dir=cluster.temp_dir)  # mode 0600
    with os.fdopen(fd, "w") as out:
        if user is not None:
            os.fchown(out.fileno(), user.uid, user.gid)
        json.dump(given, out)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    as_user = {}
    if user is not None:
        # Its own HOME (vLLM's, torch's and Triton's caches), the models where the launcher
        # prepared them, and a working directory it may enter.
        environment.update(HOME=str(home_dir(cluster)), USER=user.name, LOGNAME=user.name,
                           FABRIEK_HOME=str(fabriek_home()))
        as_user = {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": home_dir(cluster)}
    # A session of its own: a Ctrl-C in the terminal reaches the launcher only, which stops
    # the domains in order; the kernel stops them if the launcher dies (PR_SET_PDEATHSIG,
    # set after the change of user, which would clear it).
    return subprocess.Popen([sys.executable, "-m", "serving.domain_cluster", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                            start_new_session=True, preexec_fn=die_with_parent, env=environment, **as_user)


def _relay(child: subprocess.Popen, ready: threading.Event) -> None:
    """Print what a domain's process prints; set ``ready`` at its ready line."""
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.rstrip().endswith(READY_MARKER) and line.startswith("fabriek: "):
            ready.set()


def _watch(children: dict[str, subprocess.Popen], known: dict) -> int:
    """Block while any domain serves; say when one stops by itself. Returns 1 once none is
    left. ``known`` collects every process seen below the launcher (pid -> process)."""
    running = dict(children)
    rounds = 0
    while running:
        if rounds % 10 == 0:  # a scan of /proc: every 5 s is often enough to know the engines
            known.update({p.pid: p for p in descendants(os.getpid())})
        rounds += 1
        for domain, child in list(running.items()):
            if child.poll() is not None:
                del running[domain]
                others = ", ".join(running) or "none"
                say(f"the {domain} domain's cluster stopped (exit code {child.returncode}); "
                     f"still serving: {others}")
        time.sleep(0.5)
    return 1


def _stop_all(children: dict[str, subprocess.Popen], known: dict) -> None:
    """SIGTERM every domain's process at once, then wait; SIGKILL any that outlive the timeout
    (its Ray head then gets SIGTERM from the kernel, as its parent is gone)."""
    for child in children.values():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children.values():
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=30)
    # Anything of a domain's cluster that outlived its domain's process (one killed hard).
    stop_processes(list({**known, **{p.pid: p for p in descendants(os.getpid())}}.values()))

