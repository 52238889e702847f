"""Where each isolation domain's own Ray cluster listens when `fabriek serve` runs every
domain on one machine.

A Ray cluster is no security boundary inside itself (whoever reaches its GCS, dashboard or
workers can run code in it), so each domain gets a cluster of its own: its own GCS, Serve
controller, dashboard, token, proxies and node. On one machine that means its own ports,
temp directory and token file, laid out here from the config alone so that the launcher,
`fabriek power` and `fabriek config check` agree without asking a running process.

The n-th domain (in the config's domain order) takes each configured port + n; Ray's worker
port range (10002-19999, below Linux's ephemeral ports) is cut into one slice per domain.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.config.cpu_lists import cores_of
from serving.config.home import DOMAIN_PLACEHOLDER, domain_home
from serving.config.schema import PlatformConfig

# Ray's default worker port range; each domain's raylet hands out ports from its own slice.
WORKER_PORTS = (10002, 19999)
# Ray Serve's ports per domain from `local.serve_port_base`: its replicas' own HTTP servers
# (direct ingress) in the first 499 of a 500-port slice, its fallback proxy on the last; gRPC
# the same, 10000 higher. Ray Serve binds these with SO_REUSEPORT: two clusters on one
# machine that shared one would split each other's connections between their replicas.
SERVE_PORTS_PER_DOMAIN = 500
SERVE_GRPC_OFFSET = 10000
# Ray Serve's HAProxy files live in <haproxy_dir>/<56-hex node id>/ (DomainCluster.haproxy_dir).
HAPROXY_DIR = "hx"


@dataclass(frozen=True)
class DomainCluster:
    """One domain's Ray cluster on this machine.

    Args:
        domain: the isolation domain's name.
        http_port, grpc_port: its front door's public ports (its Serve proxies or HAProxy).
        dashboard_port, metrics_export_port, gcs_port: its Ray head's.
        haproxy_stats_port, haproxy_metrics_port: its HAProxy's (with `serve.proxy: haproxy`).
        worker_ports: the (first, last) port its raylet gives workers.
        serve_http_ports, serve_grpc_ports: the (first, last) ports of its replicas' own
            servers (Ray Serve's direct ingress).
        fallback_http_port, fallback_grpc_port: its Serve fallback proxy's ports.
        token_file: its Ray token, which no other domain's processes are given.
        temp_dir: its own directory (0700): Ray's temp directory inside it (``ray_temp_dir``),
            Ray's start log, the HAProxy launcher.
        cores: the cores its Ray processes start on (``local.system_cpus``), None: any. Its
            engines and front door move to its pools' cores in any case (``cpu_threads_bind``,
            ``serving.config.domains.front_door_placement``); pinning the whole cluster there
            too made the government domain's start-up 4x slower on a 2-core machine.
        nice: the niceness its whole cluster takes once it serves (``local.cluster_nice``).
        user: the Unix user its whole cluster runs as (``local.run_as``), None: the launcher's.
    """

    domain: str
    http_port: int
    grpc_port: int
    dashboard_port: int
    metrics_export_port: int
    gcs_port: int
    haproxy_stats_port: int
    haproxy_metrics_port: int
    worker_ports: tuple[int, int]
    serve_http_ports: tuple[int, int]
    serve_grpc_ports: tuple[int, int]
    fallback_http_port: int
    fallback_grpc_port: int
    token_file: Path
    temp_dir: Path
    cores: frozenset[int] | None
    nice: int = 0
    user: str | None = None

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's temp directory (sessions, logs, sockets). Ray opens it to every user (0777,
        so that users can share a cluster), so it lies inside ``temp_dir``, which is closed."""
        return self.temp_dir / "ray"

    @property
    def haproxy_dir(self) -> Path:
        """Where Ray Serve keeps the domain's HAProxy config, sockets and state: by default
        /tmp/haproxy-serve, which every cluster on the machine would share. Beside the temp
        directory, not in it: HAProxy refuses a Unix socket path over 97 bytes, and the
        sockets lie a 56-character node id further down."""
        return self.temp_dir.parent / f"fabriek-{HAPROXY_DIR}-{self.gcs_port}"

    def gcs_address(self) -> str:
        """The cluster's address for `ray.init(address=...)` and `ray status --address`."""
        return f"127.0.0.1:{self.gcs_port}"

    def to_json(self) -> dict:
        """The cluster as JSON, for the domain's own process (``from_json`` reads it back)."""
        data = dataclasses.asdict(self)
        data.update(token_file=str(self.token_file), temp_dir=str(self.temp_dir),
                    cores=None if self.cores is None else sorted(self.cores))
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DomainCluster":
        return cls(**{**data, "worker_ports": tuple(data["worker_ports"]),
                      "serve_http_ports": tuple(data["serve_http_ports"]),
                      "serve_grpc_ports": tuple(data["serve_grpc_ports"]), "token_file": Path(data["token_file"]),
                      "temp_dir": Path(data["temp_dir"]),
                      "cores": None if data["cores"] is None else frozenset(data["cores"])})

    def ports(self) -> dict[str, int]:
        """Every fixed TCP port the cluster binds, by the config field it derives from."""
        return {"http.port": self.http_port, "grpc.port": self.grpc_port,
                "local.dashboard_port": self.dashboard_port,
                "local.metrics_export_port": self.metrics_export_port, "local.gcs_port": self.gcs_port,
                "serve.haproxy_stats_port": self.haproxy_stats_port,
                "serve.haproxy_metrics_port": self.haproxy_metrics_port,
                "Serve's fallback HTTP proxy (local.serve_port_base)": self.fallback_http_port,
                "Serve's fallback gRPC proxy (local.serve_port_base)": self.fallback_grpc_port}


def local_clusters(config: PlatformConfig) -> list[DomainCluster]:
    """The Ray cluster of every domain of ``config``, in the config's domain order."""
    domains = config.domains()
    first, last = WORKER_PORTS
    slice_size = (last - first + 1) // max(len(domains), 1)
    local, serve = config.local, config.serve
    clusters = []
    for n, domain in enumerate(domains):
        serve_first = local.serve_port_base + n * SERVE_PORTS_PER_DOMAIN
        serve_last = serve_first + SERVE_PORTS_PER_DOMAIN - 1
        cores = cores_of(local.system_cpus) if local.system_cpus is not None else None
        clusters.append(DomainCluster(
            domain=domain.name, http_port=config.http.port + n, grpc_port=config.grpc.port + n,
            dashboard_port=local.dashboard_port + n, metrics_export_port=local.metrics_export_port + n,
            gcs_port=local.gcs_port + n, haproxy_stats_port=serve.haproxy_stats_port + n,
            haproxy_metrics_port=serve.haproxy_metrics_port + n,
            worker_ports=(first + n * slice_size, first + (n + 1) * slice_size - 1),
            serve_http_ports=(serve_first, serve_last - 1),
            serve_grpc_ports=(serve_first + SERVE_GRPC_OFFSET, serve_last - 1 + SERVE_GRPC_OFFSET),
            fallback_http_port=serve_last, fallback_grpc_port=serve_last + SERVE_GRPC_OFFSET,
            token_file=token_file(config, domain.name),
            temp_dir=Path(tempfile.gettempdir()) / f"fabriek-ray-{domain.name}-{local.gcs_port + n}",
            cores=cores, nice=min(local.cluster_nice.get(c, 0) for c in domain.classes),
            user=None if local.run_as is None else local.run_as.replace(DOMAIN_PLACEHOLDER, domain.name)))
    return clusters


def local_cluster(config: PlatformConfig, domain: str) -> DomainCluster:
    """The Ray cluster of ``domain``.

    Raises:
        KeyError: no domain of that name.
    """
    for cluster in local_clusters(config):
        if cluster.domain == domain:
            return cluster
    raise KeyError(domain)


def token_file(config: PlatformConfig, domain: str) -> Path:
    """Where the Ray token of ``domain``'s cluster is kept."""
    template = config.local.ray_token_file
    if template is None:
        return domain_home(domain) / "ray-token"
    return Path(template.replace(DOMAIN_PLACEHOLDER, domain)).expanduser().resolve()
