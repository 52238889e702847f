"""Write fabriek's Grafana dashboard (``fabriek/dashboards/fabriek.json``) from the panels below.

The JSON is committed, for operators to import by hand or for the chart to ship as a
ConfigMap that Grafana's dashboard sidecar loads (``metrics.grafanaDashboard``). Change the
panels here and rerun; a test fails when the file is stale, and another checks, against a
running server's scrape, that every query names a metric the platform really exports.

    .venv/bin/python deploy/helm/grafana_dashboard.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DASHBOARD_PATH = Path(__file__).parent / "fabriek" / "dashboards" / "fabriek.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Ray prefixes every application metric with ray_ (fabriek's, vLLM's and Ray Serve's own).
FABRIEK = '{pool=~"$pool", tenant_class=~"$tenant_class"}'
# Ray Serve's own series name the application, which is the isolation domain (one Serve
# application per domain); fabriek's are labelled by pool and tenant class, and each pool
# belongs to one domain, so the pool filter narrows them to a domain already.
SERVE = 'application=~"$domain"'
# Series labelled by pool only (the engines' meters, the power governor).
POOL = '{pool=~"$pool"}'
COMPLETION_TOKENS = '{kind="completion", pool=~"$pool", tenant_class=~"$tenant_class"}'
# vLLM's metrics name the engine replica's Ray worker, not its deployment (pool--model, see
# serving.engine.engines): join them to Ray Serve's own per-replica series, which name both.
ENGINE_OF_WORKER = ('group by (WorkerId, deployment) (ray_serve_replica_processing_queries'
                    f'{{{SERVE}, deployment=~"(${{pool:pipe}})--.*"}})')


def per_engine(expr: str) -> str:
    """``expr`` (a vLLM series) labelled with its engine deployment, for the selected pools."""
    return f"{expr} * on (WorkerId) group_left (deployment) {ENGINE_OF_WORKER}"
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12


def quantiles(metric: str, by: str, legend: str) -> tuple[Query, ...]:
    """p50 and p95 of a histogram, per ``by``."""
    return tuple(Query(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{FABRIEK}[{RATE}])))",
                       f"p{round(q * 100)} {legend}") for q in (0.5, 0.95))


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Service levels per pool and tenant class", (
        Panel("Time to first token", "From the request reaching the ingress to its first token, queueing "
              "included: what a chatbot user waits before text appears.", "s",
              quantiles("ray_fabriek_time_to_first_token_seconds", "pool, tenant_class",
                        "{{pool}} / {{tenant_class}}")),
        Panel("Time per output token", "Mean time between output tokens after the first, per request: "
              "the decode speed a user reads at.", "s",
              quantiles("ray_fabriek_time_per_output_token_seconds", "pool, tenant_class",
                        "{{pool}} / {{tenant_class}}")),
        Panel("End-to-end latency", "From the request reaching the ingress to its last token.", "s",
              quantiles("ray_fabriek_request_latency_seconds", "pool, tenant_class",
                        "{{pool}} / {{tenant_class}}")),
        Panel("Requests by outcome", "Finished requests per second, by pool and HTTP-style status "
              "(gRPC answers are counted with the status they map from).", "reqps", (
                  Query(f"sum by (pool, status) (rate(ray_fabriek_requests_total{FABRIEK}[{RATE}]))",
                        "{{pool}} {{status}}"),)),
    )),
    ("Tokens", (
        Panel("Token throughput", "Prompt and completion tokens per second, by pool.", "short", (
            Query(f"sum by (pool, kind) (rate(ray_fabriek_tokens_total{FABRIEK}[{RATE}]))",
                  "{{pool}} {{kind}}"),)),
        Panel("Token throughput by tenant class", "Completion tokens per second, by tenant class.", "short", (
            Query(f'sum by (tenant_class) (rate(ray_fabriek_tokens_total{{kind="completion", pool=~"$pool", '
                  f'tenant_class=~"$tenant_class"}}[{RATE}]))', "{{tenant_class}}"),)),
    )),
    ("Queueing and admission", (
        Panel("Queue time", "Time a request waited in its pool's fair queue for a slot.", "s",
              quantiles("ray_fabriek_queue_time_seconds", "pool, tenant_class", "{{pool}} / {{tenant_class}}")),
        Panel("Rejections by reason", "Requests refused by admission per second: quota_exceeded and "
              "pool_saturated answer 429/503 with Retry-After; request_too_large is a tenant's cap.", "reqps", (
                  Query(f"sum by (reason, tenant_class) (rate(ray_fabriek_rejections_total{FABRIEK}[{RATE}]))",
                        "{{reason}} ({{tenant_class}})"),)),
    )),
    ("Engines (vLLM)", (
        Panel("Where engine time goes", "Mean seconds per request inside vLLM: waiting in its "
              "scheduler, prefill, decode. With the queue time above: queueing, prefill or decode.", "s", tuple(
                  Query(f"sum by (deployment) ({per_engine(f'rate(ray_vllm_request_{phase}_time_seconds_sum[{RATE}])')}) / "
                        f"sum by (deployment) ({per_engine(f'rate(ray_vllm_request_{phase}_time_seconds_count[{RATE}])')})",
                        f"{phase} {{{{deployment}}}}") for phase in ("queue", "prefill", "decode"))),
        Panel("KV-cache use", "Share of each engine's KV-cache blocks in use; near 100% the engine "
              "preempts requests.", "percentunit", (
                  Query(f"max by (deployment) ({per_engine('ray_vllm_kv_cache_usage_perc')})", "{{deployment}}"),)),
        Panel("Requests in the engine", "Running and waiting requests inside vLLM, per engine deployment.",
              "short", (
                  Query(f"sum by (deployment) ({per_engine('ray_vllm_num_requests_running')})",
                        "running {{deployment}}"),
                  Query(f"sum by (deployment) ({per_engine('ray_vllm_num_requests_waiting')})",
                        "waiting {{deployment}}"))),
        Panel("Prefix-cache hit rate", "Share of prompt tokens found in the prefix cache (per tenant: "
              "caches are salted by tenant).", "percentunit", (
                  Query(f"sum by (deployment) ({per_engine(f'rate(ray_vllm_prefix_cache_hits_total[{RATE}])')}) / "
                        f"sum by (deployment) ({per_engine(f'rate(ray_vllm_prefix_cache_queries_total[{RATE}])')})",
                        "{{deployment}}"),)),
    )),
    ("Energy", (
        Panel("Power attributed to requests (W)", "Measured energy (NVML on GPUs, RAPL on CPUs) divided among "
              "the requests that ran in each interval, by their prefilled and decoded tokens: joules per second "
              "per pool and tenant class.", "watt", (
                  Query(f"sum by (pool, tenant_class) (rate(ray_fabriek_energy_joules_total{FABRIEK}[{RATE}]))",
                        "{{pool}} / {{tenant_class}}"),)),
        Panel("Energy per output token (J)", "Joules attributed to requests per completion token, by pool "
              "(prefill energy included: it is the requests' too).", "joule", (
                  Query(f"sum by (pool) (rate(ray_fabriek_energy_joules_total{FABRIEK}[{RATE}])) / "
                        f"sum by (pool) (rate(ray_fabriek_tokens_total{COMPLETION_TOKENS}[{RATE}]))", "{{pool}}"),)),
        Panel("Measured power by pool (W)", "All the energy each pool's engine meters counted, and the part "
              "of it in intervals when no request ran (idle), as power.", "watt", (
                  Query(f"sum by (pool) (rate(ray_fabriek_engine_energy_joules_total{POOL}[{RATE}]))",
                        "measured {{pool}}"),
                  Query(f"sum by (pool) (rate(ray_fabriek_engine_idle_energy_joules_total{POOL}[{RATE}]))",
                        "idle {{pool}}"))),
        Panel("Power against caps", "Each pool's measured power, as the power governor sees it, and the "
              "power caps in force (from the config or `fabriek power cap`).", "watt", (
                  Query(f"max by (pool) (ray_fabriek_power_watts{POOL})", "{{pool}}"),
                  Query("max by (cap) (ray_fabriek_power_cap_watts)", "cap {{cap}}"))),
        Panel("Running limit under power caps", "Requests each pool may run at once under the power caps "
              "(its configured limit while no cap binds).", "short", (
                  Query(f"max by (pool) (ray_fabriek_power_running_limit{POOL})", "{{pool}}"),)),
        Panel("Power caps binding", "1 while a cap's scope draws more than the cap (its pools' running "
              "limits are then lowered), 0 otherwise.", "short", (
                  Query("max by (cap) (ray_fabriek_power_cap_binding)", "{{cap}}"),)),
    )),
    ("Ray Serve", (
        Panel("Healthy replicas", "Healthy replicas per deployment: the ingress, the admission "
              "controller and one engine deployment per pool and model.", "short", (
                  Query(f'sum by (application, deployment) (ray_serve_deployment_replica_healthy{{{SERVE}}})',
                        "{{application}} {{deployment}}"),)),
        Panel("Requests at replicas", "Requests in flight at each deployment's replicas.", "short", (
            Query(f'sum by (application, deployment) (ray_serve_replica_processing_queries{{{SERVE}}})',
                  "{{application}} {{deployment}}"),)),
    )),
)


def _variable(name: str, label: str, metric: str = "ray_fabriek_requests_total", label_name: str = "") -> dict:
    query = f"label_values({metric}, {label_name or name})"
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard() -> dict:
    panels, y, panel_id = [], 0, 1
    for title, row in ROWS:
        panels.append({"id": panel_id, "type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append({
                "id": panel_id, "type": "timeseries", "title": panel.title, "description": panel.description,
                "datasource": DATASOURCE, "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": panel.unit, "custom": {"fillOpacity": 10}}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}},
                "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr,
                             "legendFormat": q.legend} for i, q in enumerate(panel.queries)]})
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": "fabriek-serving", "title": "fabriek: serving", "tags": ["fabriek", "ray-serve", "vllm"],
        "description": "Service levels, tokens, queueing, engines and energy of fabriek, per isolation domain, pool and tenant class.",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"}, "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            _variable("domain", "Isolation domain", "ray_serve_deployment_replica_healthy", "application"),
            _variable("pool", "Pool"), _variable("tenant_class", "Tenant class")]},
        "annotations": {"list": []}, "links": [], "panels": panels}


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARD_PATH.parent.mkdir(exist_ok=True)
    DASHBOARD_PATH.write_text(render())
    print(f"wrote {DASHBOARD_PATH}")
