"""The Helm chart's values schema, generated: ``python deploy/helm/values_schema.py [--check]``.

``platform`` is fabriek's own platform config (``serving.config.PlatformConfig``), the same
schema ``fabriek serve`` reads; the rest are the chart's Kubernetes settings, described
here as pydantic models so that ``values.schema.json`` is never edited by hand. Kubernetes
pod fields (resources, nodeSelector, tolerations, affinity, volumes, ...) pass through
to the pod templates with ``toYaml``; the Kubernetes schema checks them at install.

JSON schema checks shape only: vLLM engine arguments and Ray Serve deployment options are
checked by Python validators when the app is built (``fabriek config check``, and the
chart tests build the rendered serve config).

With ``--check`` it writes nothing and exits 1 when the committed file is stale.
"""

from __future__ import annotations

import itertools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from routers import TenantClass  # noqa: E402  (needs the repo on sys.path)
from serving.config import PlatformConfig  # noqa: E402

SCHEMA_PATH = Path(__file__).parent / "fabriek" / "values.schema.json"

# Kubernetes objects passed through verbatim; their own schema applies in the cluster.
K8sObject = dict[str, Any]
K8sList = list[dict[str, Any]]
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(_Values):
    """The container image of every Ray pod: a Ray image with fabriek installed (deploy/Dockerfile)."""

    repository: str = Field(min_length=1, description="Image repository.")
    tag: str = Field(min_length=1, description="Image tag; pin one per release.")
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(description="Kubernetes imagePullPolicy.")


class PodSettings(_Values):
    """Kubernetes settings shared by the head and the worker groups; all optional."""

    resources: K8sObject = Field(default_factory=dict, description="Container resources (CPU, memory); GPUs come from `gpus`.")
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: K8sList = Field(default_factory=list, description="Tolerations for the nodes' taints.")
    affinity: K8sObject = Field(default_factory=dict, description="Pod affinity rules.")
    env: K8sList = Field(default_factory=list, description="Extra container environment (e.g. object-store credentials).")
    envFrom: K8sList = Field(default_factory=list, description="Extra container environment from Secrets or ConfigMaps.")
    volumes: K8sList = Field(default_factory=list, description="Extra pod volumes (e.g. the model store).")
    volumeMounts: K8sList = Field(default_factory=list, description="Extra container volume mounts.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    rayStartParams: dict[str, str] = Field(default_factory=dict, description=(
        "Extra `ray start` parameters (strings); the chart sets the pool and domain resources, the GPU count and Ray's ports (rayPorts) itself."))


class Head(PodSettings):
    """The Ray head: GCS, dashboard, Serve controller; no GPUs."""

    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        description="Type of the head Service KubeRay creates.")


class WorkerGroup(PodSettings):
    """The Kubernetes side of one pool: one KubeRay worker group, one pod per node."""

    gpus: int = Field(ge=0, le=16, description=(
        "GPUs per worker pod (nvidia.com/gpu and Ray's num-gpus); 0 for a CPU pool. Every "
        "engine's tensor_parallel_size x pipeline_parallel_size must fit in it."))
    replicas: int = Field(ge=0, description="Worker pods at install.")
    minReplicas: int = Field(ge=0, description="Fewest worker pods the autoscaler keeps.")
    maxReplicas: int = Field(ge=1, description="Most worker pods the autoscaler starts.")
    shmSize: str = Field(pattern=_QUANTITY, description="Size of /dev/shm (memory-backed) for NCCL and Ray.")


class Autoscaling(_Values):
    """Ray's in-tree autoscaler, which adds and removes worker pods within each group's bounds."""

    enabled: bool = Field(description="Run the autoscaler beside the head.")
    idleTimeoutSeconds: int = Field(ge=0, description="How long a worker pod idles before it is removed.")
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] = Field(description="KubeRay upscaling mode.")
    resources: K8sObject = Field(description="Resources of the autoscaler container.")


# Every name an isolation domain can have: each non-empty set of tenant classes, sorted and
# joined with '-' (routers/isolation_domains.py).
DomainName = Enum("DomainName", {name: name for name in sorted(
    "-".join(sorted(combo)) for n in range(1, len(TenantClass) + 1)
    for combo in itertools.combinations([str(c) for c in TenantClass], n))}, type=str)


class DomainSecret(_Values):
    """One isolation domain's Secret: its tenants' key hashes, its cache salt secret, its usage database URL."""

    existingSecret: str = Field("", description=(
        "Name of a Secret to use instead of creating one; it needs the keys `api-keys.json` "
        "and `cache-salt.secret`, and may hold `usage-database-url`."))
    apiKeys: str = Field("", description=(
        "Content of the domain's key file (`fabriek keys create` writes it, salted hashes "
        "only, this domain's tenants only); empty: no keys, every request gets 401 until "
        "keys are added."))
    cacheSaltSecret: str = Field("", pattern=r"^([0-9a-fA-F]{64,})?$", description=(
        "Hex secret (>= 64 digits) of the domain's per-tenant prefix-cache salts; empty: "
        "generated once and kept across upgrades."))
    usageDatabaseUrl: str = Field("", description=(
        "URL of the domain's usage database, handed to its pods only as the variable "
        "platform.ledger.url_env names (FABRIEK_USAGE_DATABASE_URL); empty: platform.ledger.url, "
        "else SQLite inside each ingress pod, lost with the pod."))


class Secret(_Values):
    """Per isolation domain, the Secret mounted only into that domain's worker pods."""

    domains: dict[DomainName, DomainSecret | None] = Field(default_factory=dict, description=(
        "Keyed by domain name (`fabriek config check` lists a config's domains); a domain "
        "left out gets a Secret with no keys and a generated salt; null drops an entry."))


class RayPorts(_Values):
    """Ray's ports, fixed so that the NetworkPolicies can name them (the head's GCS is 6379)."""

    nodeManager: int = Field(ge=1024, le=65535, description="The raylet's port (`node-manager-port`).")
    objectManager: int = Field(ge=1024, le=65535, description="The object manager's port (`object-manager-port`).")
    dashboardAgentGrpc: int = Field(ge=1024, le=65535, description="The dashboard agent's gRPC port.")
    dashboardAgentListen: int = Field(ge=1024, le=65535, description=(
        "The dashboard agent's HTTP port (KubeRay's health probes use it)."))
    minWorker: int = Field(ge=1024, le=65535, description="Lowest port of Ray's worker processes.")
    maxWorker: int = Field(ge=1024, le=65535, description="Highest port of Ray's worker processes.")


class RayAuth(_Values):
    """Ray's token authentication of the dashboard and the cluster's control plane (Ray >= 2.52)."""

    mode: Literal["token", "disabled"] = Field(description=(
        "token: each domain's Ray cluster has its own token (key `auth_token` of the Secret "
        "RELEASE-fabriek-<domain>-ray, generated once), which KubeRay sets on every Ray container "
        "of that cluster and its dashboard asks for; disabled: anyone who reaches a dashboard "
        "can run code on that cluster."))


class Grpc(_Values):
    """Ray Serve's gRPC proxy."""

    servicerFunctions: list[str] = Field(description=(
        "Import paths of the gRPC servicer adders (`grpc_servicer_functions`); the port is "
        "platform.grpc.port."))


class Service(_Values):
    """A Kubernetes Service in front of the Ray pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(description="Service type.")
    annotations: dict[str, str] = Field(description="Service annotations (e.g. for a load balancer).")


class Services(_Values):
    """Services the chart creates (KubeRay adds its own head and serve Services)."""

    http: Service = Field(description=(
        "Each domain's OpenAI-compatible API (platform.http.port, 8000): RELEASE-fabriek-<domain>-http."))
    grpc: Service = Field(description=(
        "Each domain's gRPC API (platform.grpc.port, 9000): RELEASE-fabriek-<domain>-grpc."))
    dashboard: Service = Field(description="The Ray dashboard (8265); keep it cluster-internal.")


class Ingress(_Values):
    """An Ingress for the HTTP API: path /<domain> to each domain's HTTP Service."""

    enabled: bool = Field(description="Create the Ingress.")
    className: str = Field(description="IngressClass name; empty: the cluster's default.")
    annotations: dict[str, str] = Field(description="Ingress annotations.")
    host: str = Field(description="Host name of the API; empty: any host.")
    tls: K8sList = Field(description="Ingress TLS entries (hosts and secretName).")


class NetworkPolicy(_Values):
    """Deny by default; each domain's pods talk only to their own domain, the head's control
    plane, API clients on the API ports, and the egress peers listed here."""

    enabled: bool = Field(description="Create the NetworkPolicies.")
    apiClients: K8sList = Field(description=(
        "NetworkPolicy peers allowed to every domain's HTTP and gRPC ports; empty: any source."))
    dashboardClients: K8sList = Field(description=(
        "Peers allowed to the dashboard (8265) and GCS (6379) besides the KubeRay operator; empty: none."))
    metricsClients: K8sList = Field(description="Peers allowed to the metrics port (8080), e.g. Prometheus.")
    kuberayOperatorNamespace: str = Field(min_length=1, description=(
        "Namespace of the KubeRay operator, which polls the dashboard for Serve status."))
    dnsEgress: K8sList = Field(description="Peers every pod may send DNS (port 53) to; empty: any address.")
    ledgerEgress: K8sList = Field(description=(
        "Peers of the usage databases the domains' pods may reach (any port); empty: none."))
    modelStoreEgress: K8sList = Field(description=(
        "Peers of the model store (object store endpoints) the domains' pods may reach (any port); empty: none."))
    apiServerEgress: K8sList = Field(description=(
        "Peers of the Kubernetes API server, which the head's autoscaler reaches on 443 and "
        "6443; empty: any address on those ports."))
    extraEgress: K8sList = Field(description=(
        "Further egress rules (NetworkPolicyEgressRule) of every Ray pod, e.g. to the "
        "OpenTelemetry collector."))


class PodDisruptionBudget(_Values):
    """Limits voluntary evictions (node drains) of each worker group."""

    enabled: bool = Field(description="Create one PodDisruptionBudget per worker group.")
    maxUnavailable: int = Field(ge=0, description="Worker pods of a group that may be evicted at once.")


class Monitor(_Values):
    """A Prometheus-operator monitor of the Ray metrics endpoints."""

    enabled: bool = Field(description="Create it (needs the monitoring.coreos.com CRDs).")
    interval: str = Field(pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")
    labels: dict[str, str] = Field(description="Extra labels, e.g. the one your Prometheus selects.")


class GrafanaDashboard(_Values):
    """fabriek's Grafana dashboard as a ConfigMap, for Grafana's dashboard sidecar."""

    enabled: bool = Field(description="Create the ConfigMap.")
    labels: dict[str, str] = Field(description="Labels the sidecar selects (its default: grafana_dashboard).")


class Metrics(_Values):
    """Ray's Prometheus metrics (port 8080 on every pod, engine metrics included)."""

    port: int = Field(ge=1, le=65535, description="Ray's metrics export port.")
    serviceMonitor: Monitor = Field(description="A ServiceMonitor on a headless metrics Service.")
    podMonitor: Monitor = Field(description="A PodMonitor on the Ray pods.")
    grafanaDashboard: GrafanaDashboard


class Tracing(_Values):
    """OpenTelemetry traces of every request (serving/records/tracing.py), off while no endpoint is set."""

    otlpEndpoint: str = Field(pattern=r"^(https?://.+)?$", description=(
        "OTLP endpoint of your collector, e.g. http://otel-collector.monitoring:4317; empty: off."))
    protocol: Literal["grpc", "http/protobuf"] = Field(description="OTLP protocol of that endpoint.")
    samplingRatio: float = Field(ge=0, le=1, description=(
        "Share of new traces kept; a request whose traceparent says sampled is always kept."))
    serviceName: str = Field(min_length=1, description="service.name of the spans.")
    vllmSpans: bool = Field(description=(
        "Also export vLLM's own llm_request span from every engine (FABRIEK_VLLM_TRACES)."))


class ChartValues(_Values):
    """Values of the fabriek Helm chart."""

    nameOverride: str = Field(description="Replaces the chart name in object names.")
    fullnameOverride: str = Field(description="Replaces the whole object name prefix.")
    image: Image
    imagePullSecrets: K8sList = Field(description="Pull secrets of every pod.")
    rayVersion: str = Field(min_length=1, description="Ray version in the image (KubeRay's rayVersion).")
    platform: PlatformConfig = Field(description=(
        "The fabriek platform config (serving/config/schema.py; the same schema as "
        "serving/configs/local-cpu.yaml); it becomes the Serve application's args."))
    head: Head
    workerGroups: dict[str, WorkerGroup] = Field(description=(
        "One entry per pool of `platform.pools`, keyed by pool name: its worker group."))
    autoscaling: Autoscaling
    secret: Secret
    domainNamespaces: dict[DomainName, Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]] = Field(default_factory=dict, description=(
        "Namespace of each isolation domain's objects (its RayService, Secrets, Services, "
        "NetworkPolicies), keyed by domain name; a domain left out: the release's namespace. "
        "The namespaces must exist."))
    rayAuth: RayAuth
    rayPorts: RayPorts
    grpc: Grpc
    services: Services
    ingress: Ingress
    networkPolicy: NetworkPolicy
    podDisruptionBudget: PodDisruptionBudget
    metrics: Metrics
    tracing: Tracing
    serviceAccount: dict[str, Any] = Field(description=(
        "`create` (bool), `name` and `annotations` of the pods' ServiceAccount."))
    podSecurityContext: K8sObject = Field(description="Pod securityContext of every Ray pod.")
    securityContext: K8sObject = Field(description="Container securityContext of every Ray container.")


def generate() -> str:
    """The values.schema.json text."""
    schema = ChartValues.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fabriek Helm chart values (generated by deploy/helm/values_schema.py)"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write values.schema.json, or with ``--check`` report whether it is current."""
    text = generate()
    if "--check" in argv:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run `python deploy/helm/values_schema.py`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
