"""Ports `fabriek serve` needs, claimed before anything slow starts.

A port held by another process would only fail Ray's start minutes later, as "Address
already in use" deep in a Ray log. A port held by a leftover HAProxy of a Ray node that is
gone (``fabriek serve`` killed with SIGKILL) is freed by stopping that HAProxy; any other
holder is named in the error, with its pid and command line, and left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
from dataclasses import dataclass

from serving.config import PlatformConfig
from serving.config.cluster_layout import local_clusters
from serving.local.console import say
from serving.local.process_tree import stop_processes

# Ray Serve starts HAProxy as `haproxy -db -f <dir>/<node id>/haproxy.cfg`
# (ray.serve._private.haproxy): <dir> is the domain's (DomainCluster.haproxy_dir), or
# /tmp/haproxy-serve before fabriek moved it; the node id also names that node's raylet.
_RAY_HAPROXY_CONFIG = re.compile(r"/(?:haproxy-serve|fabriek-hx-[0-9]+)/(?P<node_id>[0-9a-f]{16,})/haproxy\.cfg$")
# Where a port has a command-line flag, the message names it rather than the config field.
_PORT_FLAGS = {"http.port": "--http-port", "grpc.port": "--grpc-port", "local.dashboard_port": "--dashboard-port"}


class PortInUseError(RuntimeError):
    """A port fabriek needs is held by a process that is not a provable leftover of ours."""


@dataclass(frozen=True)
class PortHolder:
    """A process with a TCP socket on a port; ``pid`` None when this user cannot see it."""

    pid: int | None
    cmdline: str


def stop_orphaned_haproxy(node_id: str) -> None:
    """Stop this node's HAProxy if Ray left it behind.

    Ray's HAProxy runs in a process group of its own; when every Ray process is signalled
    at once (a `kill` of the whole group), its manager dies before stopping it. Its config
    lives under a directory named after the Ray node, which identifies ours.
    """
    import psutil

    marker = f"/{node_id}/haproxy.cfg"
    stop_processes([p for p in psutil.process_iter(["cmdline"]) if any(marker in part for part in p.info["cmdline"] or [])])


def config_ports(config: PlatformConfig) -> dict[str, tuple[str, int]]:
    """Every fixed TCP port `fabriek serve` binds, by config field and domain: the address
    and the port (the first domain's field itself, every further domain's that port + n)."""
    ports = {}
    for cluster in local_clusters(config):
        hosts = {"http.port": config.http.host, "grpc.port": config.http.host,
                 "local.dashboard_port": config.local.dashboard_host}
        for field, port in cluster.ports().items():
            if (field.startswith("serve.haproxy") or "fallback proxy" in field) and config.serve.proxy != "haproxy":
                continue
            ports[f"{field}, {cluster.domain} domain"] = (hosts.get(field, "0.0.0.0"), port)
    return ports


def claim_ports(config: PlatformConfig) -> None:
    """Make sure every port of ``config`` is free before Ray starts.

    A port held by a leftover HAProxy of a Ray node that is gone (``fabriek serve`` killed
    with SIGKILL) is freed by stopping that HAProxy; any other holder is left alone.

    Raises:
        PortInUseError: two fields of two domains come to the same port, or a port is held
            by anything else; the message names the port, the holding process's pid and
            command line, and the fix.
    """
    problems = []
    owners: dict[int, list[str]] = {}
    for field, (_, port) in config_ports(config).items():
        owners.setdefault(port, []).append(field)
    for port, fields in owners.items():
        if len(fields) > 1:
            problems.append(f"port {port} is configured twice: {' and '.join(fields)} (the n-th domain takes "
                            "each configured port + n); give the fields ports further apart")
    if problems:
        raise PortInUseError("\n".join(problems))
    for field, (host, port) in config_ports(config).items():
        if is_port_free(host, port):
            continue
        holders = port_holders(port)
        leftovers = [h for h in holders if _orphaned_ray_haproxy(h) is not None]
        if leftovers and len(leftovers) == len(holders):
            say(f"stopping a leftover HAProxy of a Ray node that is gone, on port {port} ({field}): "
                 + ", ".join(f"pid {h.pid}" for h in leftovers))
            stop_processes(_processes(h.pid for h in leftovers))
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
    name = field.split(",")[0]
    name = name[name.index("(") + 1:name.index(")")] if "(" in name else name
    fix = f"stop it, or give fabriek another port ({_PORT_FLAGS.get(name, '`' + name + '` in the config')})"
    if not holders:
        return (f"port {port} ({field}) on {host} is in use by a process fabriek cannot see "
                f"(`ss -ltnp 'sport = :{port}'` as root shows it); {fix}")
    named = "; ".join(f"pid {h.pid}: {h.cmdline[:300]}" if h.pid is not None
                      else "a process of another user (run `ss -ltnp` as root to see it)" for h in holders)
    return f"port {port} ({field}) on {host} is in use by {named}; {fix}"
