"""The Grafana dashboard: generated, well-formed, and about metrics fabriek defines.

That every query names a metric a running server exports is checked end to end in
tests/serving/test_e2e_metrics.py.
"""

from __future__ import annotations

import json
import re
import sys

from tests.deploy.conftest import CHART, REPO

sys.path.insert(0, str(REPO / "deploy" / "helm"))
import grafana_dashboard  # noqa: E402

# Where the platform defines its metrics.
METRIC_MODULES = ("serving/records/metrics.py", "serving/engine/energy_sampler.py", "serving/power/governor.py")
DASHBOARD = json.loads((CHART / "dashboards" / "fabriek.json").read_text())


def _targets():
    return [(panel, target) for panel in DASHBOARD["panels"] for target in panel.get("targets", ())]


def test_committed_json_is_what_the_generator_writes():
    assert grafana_dashboard.DASHBOARD_PATH.read_text() == grafana_dashboard.render(), (
        "stale: run .venv/bin/python deploy/helm/grafana_dashboard.py")


def test_panels_have_unique_ids_and_fit_the_grid():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0


def test_every_query_uses_the_chosen_datasource_and_balances_its_brackets():
    assert _targets()
    for panel, target in _targets():
        assert panel["datasource"] == target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        expr = target["expr"]
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), (panel["title"], expr)
        assert target["legendFormat"]


def test_fabrieks_metrics_in_queries_are_the_ones_the_platform_defines():
    # The platform creates its Ray metrics in __init__s (the front door's, the engine's energy
    # loop, the power governor); read their names from the sources rather than start Ray here.
    defined = set()
    for module in METRIC_MODULES:
        source = (REPO / module).read_text()
        defined |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(fabriek_[a-z_]+)"', source))
    used = {name for _, target in _targets() for name in re.findall(r"ray_(fabriek_[a-z_]+)", target["expr"])}
    # Prometheus names: a counter gains _total, a histogram _bucket, _sum and _count.
    base_names = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert base_names <= defined, base_names - defined  # nothing the platform does not define
    assert base_names == defined, defined - base_names  # and every platform metric has a panel


def test_pool_and_tenant_class_filters_come_from_fabrieks_labels():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["pool"]["definition"] == "label_values(ray_fabriek_requests_total, pool)"
    assert variables["tenant_class"]["definition"] == "label_values(ray_fabriek_requests_total, tenant_class)"


def test_domain_filter_is_the_serve_application_of_each_isolation_domain():
    # One Serve application per domain (serving/app.py): Ray Serve's series say which.
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["domain"]["definition"] == "label_values(ray_serve_deployment_replica_healthy, application)"
    serve_queries = [t["expr"] for _, t in _targets() if "ray_serve_" in t["expr"]]
    assert serve_queries and all('application=~"$domain"' in expr for expr in serve_queries)
    assert 'application=\\"fabriek\\"' not in json.dumps(DASHBOARD)
