"""A domain's Ray head on this machine (serving/local/ray_head.py): its own token, ports and
environment, without starting Ray."""

from __future__ import annotations

import dataclasses
import os
import stat

from serving.config import load_config
from serving.config.cluster_layout import local_clusters
from serving.local.ray_head import cluster_environment, ensure_token, enter_cluster_environment, head_command


def test_a_token_is_made_once_private_and_kept(tmp_path):
    token = tmp_path / "domains" / "government" / "ray-token"
    ensure_token(token)
    first = token.read_text()
    assert len(first) >= 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    ensure_token(token)
    assert token.read_text() == first


def test_each_cluster_is_given_its_own_token_by_path_and_its_own_haproxy_ports(monkeypatch):
    config = load_config(None, check_library_settings=False)
    government, commercial = local_clusters(config)
    environments = [cluster_environment(config, c) for c in (government, commercial)]
    assert [e["RAY_AUTH_TOKEN_PATH"] for e in environments] == [str(government.token_file), str(commercial.token_file)]
    assert all(e["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in e for e in environments)
    assert environments[0]["RAY_SERVE_HAPROXY_STATS_PORT"] != environments[1]["RAY_SERVE_HAPROXY_STATS_PORT"]
    # A token inherited from anywhere else never reaches a domain's processes.
    for name in environments[1]:  # monkeypatch puts this process's environment back afterwards
        monkeypatch.setenv(name, "before")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "another-clusters-token")
    enter_cluster_environment(environments[1])
    assert "RAY_AUTH_TOKEN" not in os.environ and os.environ["RAY_AUTH_TOKEN_PATH"] == str(commercial.token_file)


def test_the_head_command_sets_every_port_a_second_cluster_would_share():
    config = load_config(None, check_library_settings=False)
    commands = [head_command(config, c, {f"domain_{c.domain}": 1.0}) for c in local_clusters(config)]
    flags = [{arg.split("=")[0]: arg.partition("=")[2] for arg in command if arg.startswith("--")}
             for command in commands]
    for flag in ("--port", "--dashboard-port", "--dashboard-agent-listen-port", "--ray-client-server-port",
                 "--metrics-export-port", "--temp-dir", "--min-worker-port", "--max-worker-port"):
        assert flags[0][flag] != flags[1][flag], flag
    assert all("--block" in command and "--head" in command for command in commands)


def test_each_domains_haproxy_runs_at_its_front_doors_niceness_never_below_its_clusters(tmp_path, monkeypatch):
    import subprocess
    import sys

    from serving.local.ray_head import HAPROXY_LAUNCHER, haproxy_niceness, write_haproxy_launcher

    config = load_config(None, check_library_settings=False)
    government, commercial = local_clusters(config)
    # The shipped config: the government front door at its pool's 0; the commercial one at
    # Ray's 15, its cluster at 19.
    assert (haproxy_niceness(config, government), haproxy_niceness(config, commercial)) == (0, 19)
    assert cluster_environment(config, government)["RAY_SERVE_HAPROXY_BINARY_PATH"] == \
        str(government.temp_dir / HAPROXY_LAUNCHER)
    # The launcher becomes the binary Ray would have run (here the operator's own), with
    # every argument, at the niceness (a raise: allowed without privileges).
    fake_haproxy = tmp_path / "haproxy"
    fake_haproxy.write_text(f"#!{sys.executable}\nimport os, sys\nprint(os.getpriority(os.PRIO_PROCESS, 0), sys.argv[1:])\n")
    fake_haproxy.chmod(0o700)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake_haproxy))
    cluster = dataclasses.replace(commercial, temp_dir=tmp_path)
    launcher = write_haproxy_launcher(cluster, 17)
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o700
    out = subprocess.run([str(launcher), "-db", "-f", "conf"], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1) == ["17", "['-db', '-f', 'conf']\n"]
