"""End to end: the Prometheus endpoint counts known traffic exactly, by pool and tenant class,
and every query of the Grafana dashboard names a metric that endpoint really serves."""

from __future__ import annotations

import concurrent.futures
import contextlib
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
    """Sample name -> (labels, value) of every series on every domain cluster's metrics
    endpoint (as Prometheus scrapes each)."""
    samples = defaultdict(list)
    for domain in fabriek_server.clusters:
        text = httpx.get(fabriek_server.metrics_url(domain), timeout=60).text
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
    before, settled = None, counts()
    while settled != before:
        before = settled
        time.sleep(EXPORT_INTERVAL_S)
        settled = counts()
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


@contextlib.contextmanager
def engines_working(fabriek_server, tenants: tuple[str, ...]):
    """Long generations on the tenants' pools while the block runs: vLLM refreshes its gauges
    (KV-cache use, running, waiting) only while an engine works, and Ray stops exporting a
    gauge two export intervals after its last refresh (4 s on the test server)."""
    with concurrent.futures.ThreadPoolExecutor(len(tenants)) as pool:
        answers = [pool.submit(chat, fabriek_server, tenant, max_tokens=400, ignore_eos=True) for tenant in tenants]
        yield lambda: not all(answer.done() for answer in answers)
    assert all(answer.result().status_code == 200 for answer in answers)


def seen_while(fabriek_server, working, wanted, found_in, timeout_s: float = 120.0) -> set:
    """What ``found_in(scrape)`` yields of ``wanted``, gathered over scrapes until all is seen.

    Scrapes go on as long as the engines work, not for a fixed time: on a busy CI machine one
    scrape can take many seconds, and a generation may start well after its request was sent."""
    seen: set = set()
    deadline = time.monotonic() + timeout_s
    while not wanted <= seen and working() and time.monotonic() < deadline:
        seen |= found_in(scrape(fabriek_server)) & wanted
        time.sleep(1)
    return seen


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
    with engines_working(fabriek_server, ("gov-demo",)) as working:
        seen = seen_while(fabriek_server, working, wanted, set)
    assert not wanted - seen, f"the dashboard queries metrics nobody exports: {sorted(wanted - seen)}"


def test_engine_metrics_join_their_deployment_as_the_dashboard_does(fabriek_server):
    """vLLM's series name a Ray worker; the dashboard finds its pool--model deployment through
    Ray Serve's per-replica series of the same worker."""
    def engines(samples) -> set:
        deployment_of = {labels["WorkerId"]: labels["deployment"]
                         for labels, _ in samples["ray_serve_replica_processing_queries"]}
        return {deployment_of.get(labels["WorkerId"]) for labels, _ in samples["ray_vllm_kv_cache_usage_perc"]}

    with engines_working(fabriek_server, ("gov-demo", "pilot-demo")) as working:
        found = seen_while(fabriek_server, working, ENGINES, engines)
    assert found == ENGINES
