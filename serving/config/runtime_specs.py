"""Config sections for how the platform runs: its HTTP and gRPC APIs, the front doors, Ray
Serve's data path and the local Ray head of `fabriek serve`."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from routers import TenantClass
from serving.config.library_settings import check_deployment_options

DeploymentOptions = Annotated[dict[str, Any], AfterValidator(check_deployment_options)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HttpSpec(_Frozen):
    """The OpenAI-compatible HTTP API."""

    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description=(
        "Largest request body accepted; larger ones get 413."))


class GrpcSpec(_Frozen):
    """The gRPC API (``fabriek.v1.InferenceService``), served by Ray Serve's gRPC proxy."""

    # What Ray Serve's gRPC proxy (and, with the haproxy front end, every ingress replica)
    # imports to register the service (fabriek decodes the requests itself: see the module);
    # the Helm chart renders the same path.
    SERVICER_FUNCTION: ClassVar[str] = "serving.protos.servicer.add_inference_service"

    port: int = Field(9000, ge=1, le=65535, description=(
        "gRPC port of the API; it binds the same address as `http.host`."))

    def ray_options(self) -> dict[str, Any]:
        """Ray Serve's ``gRPCOptions`` for this API."""
        return {"port": self.port, "grpc_servicer_functions": [self.SERVICER_FUNCTION]}


class IngressSpec(_Frozen):
    """Each isolation domain's front door: its ingress deployment, which terminates HTTP and
    gRPC and calls the domain's engines, and its admission controller."""

    deployment: DeploymentOptions = Field(
        default_factory=lambda: {"num_replicas": 1, "max_ongoing_requests": 1000,
                                 "ray_actor_options": {"num_cpus": 0.5}},
        description=("Ray Serve deployment options of each domain's ingress (every domain gets "
                     "these replicas; they are placed on nodes with the domain's resource "
                     "`domain_<name>`)."))
    cpu_nice: int | None = Field(None, ge=-20, le=19, description=(
        "The niceness of every domain's front door (ingress replicas and admission "
        "controller). Unset: the lowest `cpu_nice` of the domain's pools, else Ray's 15, so "
        "that on one machine a front door competes with its own domain's engine as an equal. "
        "Below 15 needs CAP_SYS_NICE (root); without it a warning, and 15."))


class ServeRuntimeSpec(_Frozen):
    """Ray Serve's cluster-wide data-path settings (Ray reads them from the environment of
    every Ray process, so they are set before the cluster starts)."""

    proxy: Literal["haproxy", "ray"] = Field("haproxy", description=(
        "haproxy: Ray Serve's HAProxy front end with direct ingress, where HAProxy forwards "
        "HTTP straight to the ingress replicas' own servers (measured ~5 ms less per request "
        "than the Python proxy, see docs/benchmarks.md); ray: the classic Python proxy actor."))
    token_path: Literal["direct", "relay"] = Field("direct", description=(
        "direct: where a domain serves one model in one pool, its engine replicas are its "
        "front door (authentication, admission, ledger in the engine's own process) and "
        "streams go from vLLM to the client with no Python process between; relay: a front "
        "door deployment of its own relays every streamed batch from the engine replicas. A "
        "domain with several (pool, model) routes always uses relay (docs/operators.md)."))
    throughput_optimized: bool = Field(True, description=(
        "Ray Serve's throughput mode: user code on the replica's main event loop, buffered "
        "access logs, replica logs to files only (not stderr)."))
    drain_period_s: float = Field(30.0, ge=0, description=(
        "With the haproxy front end: how long a stopping ingress replica keeps serving so "
        "load balancers can move away; a single machine needs little."))
    haproxy_stats_port: int = Field(8404, ge=1, le=65535, description="HAProxy's stats page.")
    haproxy_metrics_port: int = Field(9101, ge=1, le=65535, description="HAProxy's Prometheus metrics.")

    def ray_env(self) -> dict[str, str]:
        """Environment variables that put these settings into effect for a Ray cluster."""
        haproxy = "1" if self.proxy == "haproxy" else "0"
        return {"RAY_SERVE_ENABLE_HA_PROXY": haproxy, "RAY_SERVE_ENABLE_DIRECT_INGRESS": haproxy,
                "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if self.throughput_optimized else "0",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(self.drain_period_s),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port)}


class LocalClusterSpec(_Frozen):
    """How `fabriek serve` starts one Ray cluster per isolation domain on one machine.

    Every port here (and `http.port`, `grpc.port`, `serve.haproxy_*_port`) is the first
    domain's; the n-th domain in `fabriek config check`'s order takes that port + n, so no
    two domains' clusters share a listening socket (serving.config.cluster_layout)."""

    num_cpus: int | None = Field(8, ge=1, description=(
        "Logical CPUs declared to Ray; more than the cores is fine, since replicas "
        "reserve logical CPUs and the engine threads are scheduled by the OS."))
    dashboard_host: str = Field("127.0.0.1", description="Address of the Ray dashboard.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Port of the Ray dashboard.")
    metrics_export_port: int = Field(8080, ge=1, le=65535, description=(
        "Port of Ray's Prometheus endpoint (/metrics): fabriek's, Ray Serve's and vLLM's metrics."))
    gcs_port: int = Field(6379, ge=1, le=65535, description=(
        "Port of the first domain's Ray GCS (its cluster's address); `fabriek power` finds "
        "each domain's cluster by it."))
    serve_port_base: int = Field(30000, ge=1024, le=54000, description=(
        "Start of the ports Ray Serve gives its replicas' own servers (direct ingress, HTTP "
        "from here, gRPC from here + 10000) and its fallback proxies: each domain's cluster "
        "takes 500 of each, from here + 500 n. Ray Serve binds them with SO_REUSEPORT, so two "
        "clusters on one machine must never share one: another `fabriek serve` on the same "
        "machine needs another base."))
    ray_token_file: str | None = Field(None, description=(
        "Each domain cluster's own Ray token (created on first start, mode 0600); "
        "`{domain}` stands for the domain's name. Default: "
        "$FABRIEK_HOME/domains/{domain}/ray-token."))
    system_cpus: str | None = Field(None, pattern=r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$", description=(
        "Cores for everything but the engines (Ray's processes, HAProxy, the ingress and the "
        "admission controller), e.g. `1` or `2-3`; each engine then moves to its pool's cores. "
        "None: any core. On one machine this keeps the platform's own work (a flood's "
        "refusals included) off a pool's cores; on a cluster, pools have nodes of their own."))
    cluster_nice: dict[TenantClass, Annotated[int, Field(ge=0, le=19)]] = Field(default_factory=dict, description=(
        "On one machine, the CPU niceness each class's domain cluster takes as a whole once it "
        "serves (a domain of several classes takes the lowest): its session's CPU group, which "
        "holds every process of the cluster, engines included. Linux shares the CPU between "
        "sessions by that niceness, so a higher one lets the domain use another domain's "
        "cores only while they are idle; its processes' own niceness (`cpu_nice`) orders them "
        "within the group. Unset: 0. On a cluster, domains have nodes of their own."))

    run_as: str | None = Field(None, description=(
        "Run each domain's cluster as a Unix user of its own, e.g. `fabriek-{domain}` "
        "(`{domain}` stands for the domain's name; created as a system user if missing): "
        "then no domain's processes can read another's Ray token, keys, salt, ledger or Ray "
        "sockets, signal its processes or read their memory. Needs `fabriek serve` started as "
        "root, and FABRIEK_HOME, the venv and the models where those users can reach them "
        "(docs/operators.md). None: every domain runs as the user who starts fabriek."))
    unknown_pth_files: Literal["refuse", "warn"] = Field("refuse", description=(
        "What `fabriek serve` does when the Python it runs on has a `.pth` file that executes "
        "code at every start and that no expected package installed (setuptools' shim and "
        "fabriek's own editable install are expected): refuse to start, or warn and start "
        "(serving/local/startup_code.py)."))

    @field_validator("run_as")
    @classmethod
    def _user_per_domain(cls, template: str | None) -> str | None:
        if template is None:
            return None
        if "{domain}" not in template:
            raise ValueError(f"{template!r} has no `{{domain}}`: every domain's cluster needs a user of its own")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]*", template.replace("{domain}", "x")) or len(template) > 40:
            raise ValueError(f"{template!r}: a user name is lower-case letters, digits, `-` and `_`")
        return template

    @field_validator("ray_token_file")
    @classmethod
    def _token_per_domain(cls, path: str | None) -> str | None:
        if path is not None and "{domain}" not in path:
            raise ValueError(f"{path!r} has no `{{domain}}`: every domain's cluster needs a token of its own")
        return path
