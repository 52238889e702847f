"""Where each isolation domain's own Ray cluster listens on one machine (serving/config/cluster_layout.py)."""

from __future__ import annotations

import pytest

from serving.config import ConfigError, load_config
from serving.config.cluster_layout import DomainCluster, local_cluster, local_clusters


def _three_domains() -> dict:
    pool = {"accelerator": "gpu", "models": ["m"]}
    return {"models": [{"id": "m", "source": "/models/m"}],
            "pools": [{"name": n, **pool} for n in ("gov", "lab", "com")],
            "classes": {"government": {"pools": ["gov"]}, "research": {"pools": ["lab"]},
                        "commercial": {"pools": ["com"]}}}


def test_the_nth_domain_takes_each_port_plus_n_and_no_socket_is_shared():
    config = load_config(_three_domains(), check_library_settings=False)
    clusters = local_clusters(config)
    assert [c.domain for c in clusters] == [d.name for d in config.domains()]
    for n, cluster in enumerate(clusters):
        assert cluster.http_port == config.http.port + n and cluster.grpc_port == config.grpc.port + n
        assert cluster.gcs_port == config.local.gcs_port + n
        assert cluster.dashboard_port == config.local.dashboard_port + n
        assert cluster.metrics_export_port == config.local.metrics_export_port + n
    ports = [p for c in clusters for p in c.ports().values()]
    assert len(ports) == len(set(ports))
    # Worker port ranges: disjoint slices of Ray's default range.
    ranges = sorted(c.worker_ports for c in clusters)
    assert ranges[0][0] == 10002 and ranges[-1][1] <= 19999
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def test_each_domain_has_its_own_token_file_and_temp_dir(tmp_path):
    config = _three_domains()
    config["local"] = {"ray_token_file": str(tmp_path / "{domain}" / "ray-token")}
    clusters = local_clusters(load_config(config, check_library_settings=False))
    assert [c.token_file for c in clusters] == [tmp_path / c.domain / "ray-token" for c in clusters]
    assert len({c.temp_dir for c in clusters}) == len(clusters)


@pytest.mark.parametrize("path", ["/srv/ray-token", "/srv/{domains}/token"])
def test_a_token_file_shared_by_all_domains_is_refused(path):
    config = _three_domains()
    config["local"] = {"ray_token_file": path}
    with pytest.raises(ConfigError, match=r"local\.ray_token_file: .*every domain's cluster needs a token of its own"):
        load_config(config, check_library_settings=False)


def test_a_cluster_travels_as_json_to_its_domains_process():
    cluster = local_cluster(load_config(_three_domains(), check_library_settings=False), "commercial")
    assert DomainCluster.from_json(cluster.to_json()) == cluster
    with pytest.raises(KeyError):
        local_cluster(load_config(_three_domains(), check_library_settings=False), "lab")


def test_ray_serves_reuseport_ports_are_each_domains_own():
    """Ray Serve binds its replicas' servers and fallback proxies with SO_REUSEPORT: a port two
    clusters shared would split one domain's connections between both domains' replicas."""
    from serving.local.ray_head import cluster_environment

    config = load_config(_three_domains(), check_library_settings=False)
    clusters = local_clusters(config)
    ranges = [r for c in clusters for r in (c.serve_http_ports, c.serve_grpc_ports)]
    singles = [p for c in clusters for p in (c.fallback_http_port, c.fallback_grpc_port)]
    taken = [p for first, last in ranges for p in range(first, last + 1)] + singles
    assert len(taken) == len(set(taken))
    for cluster in clusters:
        environment = cluster_environment(config, cluster)
        assert (int(environment["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
                int(environment["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])) == cluster.serve_http_ports
        assert int(environment["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]) == cluster.fallback_grpc_port


def test_a_domains_cluster_niceness_is_the_lowest_of_its_classes():
    config = _three_domains()
    config["local"] = {"cluster_nice": {"research": 5, "commercial": 19}}
    assert [c.nice for c in local_clusters(load_config(config, check_library_settings=False))] == [0, 5, 19]
    # Research and commercial sharing a pool are one domain: it yields no more than research.
    config["classes"]["research"]["pools"] = ["lab", "com"]
    merged = local_clusters(load_config(config, check_library_settings=False))
    assert [c.nice for c in merged] == [0, 5]


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_cluster_niceness_out_of_range_is_refused(nice):
    config = _three_domains()
    config["local"] = {"cluster_nice": {"commercial": nice}}
    with pytest.raises(ConfigError, match="cluster_nice"):
        load_config(config, check_library_settings=False)
