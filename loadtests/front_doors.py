"""Where a benchmark's tenants enter a fabriek server: each isolation domain's own base URL
and key file, as `fabriek serve` and `fabriek keys create` lay them out."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from routers import KeyFile  # noqa: E402
from serving.config import load_config  # noqa: E402


# Ports Ray binds by default once it starts (GCS, dashboard, client server, dashboard agent):
# free now, taken a moment later.
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365, 52366})


def free_port() -> int:
    """A TCP port that nothing listens on right now, and that Ray will not take by default."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def free_ports(count: int) -> int:
    """The first of ``count`` TCP ports in a row that nothing listens on now and that Ray will
    not take by default (``fabriek serve`` gives the n-th domain each configured port + n)."""
    while True:
        first = free_port()
        ports = range(first, first + count)
        if ports[-1] <= 65535 and not set(ports) & RAY_DEFAULT_PORTS and all(_is_free(p) for p in ports):
            return first


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def own_files_and_ports(config: dict, logs: Path, name: str) -> None:
    """Gives a platform config (as loaded from YAML) key, salt and ledger files under
    ``logs``, one set per isolation domain, and free ports of its own, so that it runs beside
    any other server here."""
    config["auth"] = {"key_file": str(logs / f"{name}-{{domain}}-keys.json"),
                      "cache_salt_secret_file": str(logs / f"{name}-{{domain}}-salt.secret")}
    config["ledger"] = {"url": f"sqlite:///{logs / f'{name}-{{domain}}-usage.db'}"}
    # The n-th domain's cluster takes each port + n: one free block, `domains` ports a field.
    domains = len(load_config(config, check_library_settings=False).domains())
    first = free_ports(6 * domains)
    config["grpc"]["port"] = first
    config["local"].update(metrics_export_port=first + domains, gcs_port=first + 2 * domains,
                           dashboard_port=first + 3 * domains, serve_port_base=34000,
                           ray_token_file=str(logs / f"{name}-{{domain}}-ray-token"))
    config["serve"].update(haproxy_stats_port=first + 4 * domains, haproxy_metrics_port=first + 5 * domains)


def create_key(config: dict, tenant: str) -> str:
    """A new key of ``tenant``, in its own domain's key file (as `fabriek keys create`)."""
    loaded = load_config(config)
    domain = loaded.domain_of(tenant).name
    key, _ = KeyFile(loaded.auth.resolved_key_file(domain)).create(tenant, {t.id for t in loaded.tenants})
    return key


def base_url(config: dict, tenant: str, port: int | None = None) -> str:
    """The front door of ``tenant``'s domain: ``http://127.0.0.1:PORT/<domain>``, where PORT is
    the domain's own (the first domain's ``port``, or ``http.port``, + the domain's index)."""
    loaded = load_config(config)
    domain = loaded.domain_of(tenant).name
    index = [d.name for d in loaded.domains()].index(domain)
    return f"http://127.0.0.1:{(port or loaded.http.port) + index}/{domain}"


def ledger_url(config: dict, tenant: str) -> str:
    """The usage ledger of ``tenant``'s domain."""
    loaded = load_config(config)
    return loaded.ledger.resolved_url(loaded.domain_of(tenant).name)


def grpc_target(config: dict, tenant: str) -> str:
    """The gRPC address of ``tenant``'s domain: ``grpc.port`` + the domain's index."""
    loaded = load_config(config)
    index = [d.name for d in loaded.domains()].index(loaded.domain_of(tenant).name)
    return f"127.0.0.1:{loaded.grpc.port + index}"


def health_urls(config: dict, port: int) -> list[str]:
    """Every domain's ``/health``: the server is ready when all answer 200."""
    return [f"http://127.0.0.1:{port + n}/{d.name}/health" for n, d in enumerate(load_config(config).domains())]
