"""End to end: every domain's cluster as a Unix user of its own (`local.run_as`), and what a
commercial worker (code execution assumed) then gets of the government domain's files and
processes: nothing. Started as root, as on a facility host; its own `fabriek serve`, after
the session's server has stopped (two more clusters beside it would not fit in memory)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from serving.config import DEFAULT_CONFIG_PATH, load_config
from serving.config.cluster_layout import local_clusters
from serving.config.home import fabriek_home
from serving.engine.default_model import builtin_models, prepare_builtin_model
from tests.conftest import MODEL_ID, free_ports, start_fabriek

pytestmark = [pytest.mark.e2e, pytest.mark.after_server,
              pytest.mark.skipif(os.geteuid() != 0, reason="starts each domain as its own user: needs root")]

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("cluster_probe.py")
USERS = {"government": "fabriek-government", "commercial": "fabriek-commercial"}


@pytest.fixture(scope="module")
def server(python_reachable_by_other_users):
    """`fabriek serve` with `local.run_as: fabriek-{domain}`, FABRIEK_HOME where other users
    can reach it (the built-in models copied there), and a key per demo tenant made before
    it starts (by root, as an operator would)."""
    for name in builtin_models():
        prepare_builtin_model(name, show_progress=False)
    base = Path(tempfile.mkdtemp(prefix="fabriek-run-as-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    shutil.copytree(fabriek_home() / "models", home / "models", symlinks=True)
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    first = free_ports(14)
    config["http"]["port"], config["grpc"]["port"] = first, first + 2
    config["local"].update(gcs_port=first + 4, dashboard_port=first + 6, metrics_export_port=first + 8,
                           serve_port_base=34000, run_as="fabriek-{domain}")
    config["serve"].update(haproxy_stats_port=first + 10, haproxy_metrics_port=first + 12)
    config["auth"] = {"key_file": str(base / "{domain}" / "api-keys.json"),
                      "cache_salt_secret_file": str(base / "{domain}" / "cache-salt.secret")}
    config["ledger"] = {"url": f"sqlite:///{base / '{domain}' / 'usage.db'}"}
    config["local"]["ray_token_file"] = str(base / "{domain}" / "ray-token")
    config_path = base / "platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    environment = {**os.environ, "FABRIEK_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    keys = {tenant: _cli(environment, "keys", "create", "--tenant", tenant, "--config", str(config_path))
            for tenant in ("gov-demo", "pilot-demo")}
    process, lines, ready = start_fabriek(config_path, environment)
    loaded = load_config(config_path)
    state = {"process": process, "lines": lines, "keys": keys, "config": loaded, "config_path": config_path,
             "environment": environment, "clusters": {c.domain: c for c in local_clusters(loaded)}}
    try:
        assert ready, "".join(lines[-80:])
        yield state
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _cli(environment: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "serving.cli", *args], env=environment, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.splitlines()[-1]


def _domain_processes(server, domain: str) -> list[psutil.Process]:
    temp_dir = str(server["clusters"][domain].temp_dir)
    [top] = [p for p in psutil.Process(server["process"].pid).children()
             if "serving.domain_cluster" in p.cmdline() and any(temp_dir in a for a in p.cmdline())]
    return [top, *top.children(recursive=True)]


def _ask(server, domain: str, key: str) -> str:
    cluster = server["clusters"][domain]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{cluster.http_port}/{domain}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=MODEL_ID, max_tokens=4,
                                            messages=[{"role": "user", "content": "Say hello."}])
    return answer.choices[0].finish_reason


def test_every_process_of_a_domain_runs_as_its_own_user(server):
    for domain, user in USERS.items():
        uid = pwd.getpwnam(user).pw_uid
        processes = _domain_processes(server, domain)
        assert len(processes) >= 8, domain  # head, GCS, raylet, dashboard, controller, replicas, engines
        owners = {}
        for process in processes:
            try:
                owners[" ".join(process.cmdline()[:2])] = process.uids().real
            except psutil.Error:
                continue
        assert set(owners.values()) == {uid}, (domain, owners)


def test_each_domains_files_are_its_users_alone(server):
    config = server["config"]
    for domain, user in USERS.items():
        uid = pwd.getpwnam(user).pw_uid
        cluster = server["clusters"][domain]
        files = [cluster.token_file, config.auth.resolved_key_file(domain),
                 config.auth.resolved_cache_salt_secret_file(domain),
                 Path(config.ledger.resolved_url(domain).removeprefix("sqlite:///"))]
        for path in files:
            info = path.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode) & 0o077) == (uid, 0), path
            parent = path.parent.stat()
            assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (uid, 0o700), path.parent
        # Ray opens its own temp directory to every user (0777); the one around it is closed.
        for directory in (cluster.temp_dir, cluster.haproxy_dir):
            info = directory.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o700), directory
        # Ray Serve's HAProxy files are in the domain's own directory, not /tmp/haproxy-serve.
        assert list(cluster.haproxy_dir.glob("*/haproxy.cfg"))


def test_both_domains_serve_and_a_key_made_while_serving_works(server):
    assert _ask(server, "government", server["keys"]["gov-demo"]) in ("stop", "length")
    assert _ask(server, "commercial", server["keys"]["pilot-demo"]) in ("stop", "length")
    # Root's `fabriek keys create` replaces the key file; the government's front door, which
    # runs as fabriek-government, must still read it.
    new_key = _cli(server["environment"], "keys", "create", "--tenant", "gov-demo",
                   "--config", str(server["config_path"]))
    key_file = server["config"].auth.resolved_key_file("government")
    assert key_file.stat().st_uid == pwd.getpwnam(USERS["government"]).pw_uid
    deadline = time.monotonic() + 30
    while True:  # the front door looks at the key file once a second
        try:
            assert _ask(server, "government", new_key) in ("stop", "length")
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "a key made while serving never worked"
            time.sleep(1)


def test_a_commercial_worker_can_read_nothing_of_the_government_domain(server):
    config = server["config"]
    government, commercial = server["clusters"]["government"], server["clusters"]["commercial"]
    engine_pids = [p.pid for p in _domain_processes(server, "government")
                   if any("EngineCore" in part or "ServeReplica" in part for part in p.cmdline())]
    assert engine_pids
    targets = {"files": [str(government.token_file), str(config.auth.resolved_key_file("government")),
                         str(config.auth.resolved_cache_salt_secret_file("government")),
                         config.ledger.resolved_url("government").removeprefix("sqlite:///")],
               "dirs": [str(government.temp_dir), str(government.ray_temp_dir), str(government.haproxy_dir)],
               "pids": engine_pids[:3]}
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    environment.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(commercial.token_file))
    done = subprocess.run([sys.executable, str(PROBE), commercial.gcs_address(), government.gcs_address(),
                           f"http://127.0.0.1:{government.dashboard_port}", json.dumps(targets)],
                          env=environment, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    files = results.pop("files")
    assert files.pop("uid") == pwd.getpwnam(USERS["commercial"]).pw_uid
    assert len(files) == 4 + 3 + 3 * len(targets["pids"])
    assert set(files.values()) == {"PermissionError"}, files
    assert results["gcs"]["refused_token"] and not results["gcs"]["listed_nodes"]
    # And the government cluster itself was not disturbed.
    assert httpx.get(f"http://127.0.0.1:{government.http_port}/government/health", timeout=10).status_code == 200


def test_a_stop_leaves_no_process_of_either_user(server):
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    deadline = time.monotonic() + 30
    uids = {pwd.getpwnam(user).pw_uid for user in USERS.values()}
    while True:
        left = [p for p in psutil.process_iter(["uids", "cmdline"]) if p.info["uids"] and p.info["uids"].real in uids]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, [" ".join(p.info["cmdline"] or [])[:120] for p in left]
