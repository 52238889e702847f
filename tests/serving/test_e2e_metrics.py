"""End to end: the Prometheus endpoint counts known traffic exactly, by pool and tenant class,
and every query of the Grafana dashboard names a metric that endpoint really serves."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.test_e2e_admission import chat

ENGINES = {"government--smollm2-135m-instruct", "commercial--smollm2-135m-instruct"}
DASHBOARD = "deploy/helm/fabriek/dashboards/fabriek.json"
EXPORT_INTERVAL_S = 3  # more than the test server's RAY_metrics_report_interval_ms (tests/conftest.py)
COMMERCIAL = {"pool": "commercial", "tenant_class": "commercial", "model": "smollm2-135m-instruct"}


def scrape(fabriek_server) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every series on the server's metrics endpoint."""
    text = httpx.get(f"http://127.0.0.1:{fabriek_server.metrics_port}/metrics", timeout=10).text
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples, name: str, **labels: str) -> float:
    """Summed over the series (one per ingress replica) that carry ``labels``."""
    return sum(value for series, value in samples.get(name, ())
               if all(series.get(k) == v for k, v in labels.items()))


def test_known_traffic_is_counted_exactly(fabriek_server):
    def counts():
        samples = scrape(fabriek_server)
        return {"ok": total(samples, "ray_fabriek_requests_total", **COMMERCIAL, status="200"),
                "prompt": total(samples, "ray_fabriek_tokens_total", **COMMERCIAL, kind="prompt"),
                "completion": total(samples, "ray_fabriek_tokens_total", **COMMERCIAL, kind="completion"),
                "ttft": total(samples, "ray_fabriek_time_to_first_token_seconds_count", **COMMERCIAL),
                "tpot": total(samples, "ray_fabriek_time_per_output_token_seconds_count", **COMMERCIAL),
                "latency": total(samples, "ray_fabriek_request_latency_seconds_count", **COMMERCIAL),
                "queue": total(samples, "ray_fabriek_queue_time_seconds_count", **COMMERCIAL)}

    # Earlier tests' requests may still be on their way to the endpoint (Ray exports every
    # few seconds): count from a baseline that has stopped moving.
    before = counts()
    while (settled := (time.sleep(EXPORT_INTERVAL_S), counts())[1]) != before:
        before = settled
    answers = [chat(fabriek_server, "pilot-demo", max_tokens=6).json() for _ in range(3)]
    expected = {"ok": 3, "ttft": 3, "latency": 3, "queue": 3,
                "prompt": sum(a["usage"]["prompt_tokens"] for a in answers),
                "completion": sum(a["usage"]["completion_tokens"] for a in answers),
                "tpot": sum(a["usage"]["completion_tokens"] >= 2 for a in answers)}
    deadline = time.monotonic() + 90  # Ray's metrics agent exports every few seconds
    while True:
        delta = {k: v - before[k] for k, v in counts().items()}
        if delta == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert delta == expected


def test_every_dashboard_query_names_an_exported_metric(fabriek_server):
    # Traffic that makes each kind of series exist: answers (the same long prompt twice, for
    # prefix-cache hits) and a refusal.
    long_prompt = [{"role": "user", "content": "Summarise: " + "de dijk houdt het water tegen. " * 40}]
    for _ in range(2):
        assert chat(fabriek_server, "gov-demo", max_tokens=4, messages=long_prompt).status_code == 200
    assert chat(fabriek_server, "quota-caps", max_tokens=17).status_code == 400
    dashboard = json.load(open(DASHBOARD))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    wanted = {name for query in queries for name in re.findall(r"\b(ray_[a-z_:]+)", query)}
    assert len(wanted) >= 15
    deadline = time.monotonic() + 90
    while True:
        missing = wanted - set(scrape(fabriek_server))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


def test_engine_metrics_join_their_deployment_as_the_dashboard_does(fabriek_server):
    """vLLM's series name a Ray worker; the dashboard finds its pool--model deployment through
    Ray Serve's per-replica series of the same worker."""
    # vLLM refreshes its gauges while an engine works; Ray drops a gauge left unrefreshed.
    for tenant in ("gov-demo", "pilot-demo"):
        assert chat(fabriek_server, tenant, max_tokens=8).status_code == 200

    def engines():
        samples = scrape(fabriek_server)
        deployment_of = {labels["WorkerId"]: labels["deployment"]
                         for labels, _ in samples["ray_serve_replica_processing_queries"]}
        return {deployment_of.get(labels["WorkerId"]) for labels, _ in samples["ray_vllm_kv_cache_usage_perc"]}

    deadline = time.monotonic() + 30
    while (found := engines()) != ENGINES and time.monotonic() < deadline:
        time.sleep(1)
    assert found == ENGINES
