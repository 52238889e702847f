"""A domain's cut of the config holds nothing of another domain; its front door's placement."""

from __future__ import annotations

import pytest

from serving.config import ConfigError, load_config
from serving.config.domains import domain_config, front_door_placement

CONFIG = {
    "models": [{"id": "m", "source": "/models/m"}, {"id": "n", "source": "/models/n"}],
    "pools": [{"name": "gov", "accelerator": "cpu", "models": ["m"], "cpu_threads_bind": "0-1", "cpu_nice": 0},
              {"name": "lab", "accelerator": "cpu", "models": ["m", "n"], "cpu_threads_bind": "2"},
              {"name": "com", "accelerator": "gpu", "models": ["n"]}],
    "classes": {"government": {"pools": ["gov", "lab"]}, "research": {"pools": ["lab"]},
                "commercial": {"pools": ["com"]}},
    "tenants": [{"id": "g", "class": "government", "models": ["m"]},
                {"id": "r", "class": "research", "models": ["m", "n"]},
                {"id": "c", "class": "commercial", "models": ["n"]}],
    "auth": {"key_file": "/keys/{domain}/api-keys.json", "cache_salt_secret_file": "/keys/{domain}/salt"},
    "ledger": {"url": "postgresql://fabriek_{domain}@db/usage_{domain}"},
}


def test_the_cut_holds_only_the_domains_pools_classes_tenants_and_models():
    config = load_config(CONFIG)
    assert [d.name for d in config.domains()] == ["government-research", "commercial"]
    cut = domain_config(config, "commercial")
    assert [p.name for p in cut.pools] == ["com"]
    assert [m.id for m in cut.models] == ["n"]
    assert list(cut.classes) == ["commercial"]
    assert [t.id for t in cut.tenants] == ["c"]
    assert str(cut.auth.key_file) == "/keys/commercial/api-keys.json"
    assert str(cut.auth.cache_salt_secret_file) == "/keys/commercial/salt"
    assert cut.ledger.url == "postgresql://fabriek_commercial@db/usage_commercial"
    text = cut.model_dump_json()
    assert "government" not in text and '"g"' not in text and "/models/m" not in text
    shared = domain_config(config, "government-research")
    assert [p.name for p in shared.pools] == ["gov", "lab"] and {t.id for t in shared.tenants} == {"g", "r"}


def test_a_domain_that_does_not_exist_is_an_error():
    with pytest.raises(ConfigError, match="no isolation domain 'government'"):
        domain_config(load_config(CONFIG), "government")


def test_tenants_are_found_in_their_domain():
    config = load_config(CONFIG)
    assert [config.domain_of(t).name for t in ("g", "r", "c")] == ["government-research"] * 2 + ["commercial"]
    with pytest.raises(ConfigError, match="unknown tenant 'mallory'"):
        config.domain_of("mallory")


def test_front_door_takes_its_pools_cores_and_lowest_niceness():
    config = load_config(CONFIG)
    [shared, commercial] = config.domains()
    placement = front_door_placement(config, shared)
    assert placement.ray_resources == {"domain_government-research": 0.001}
    assert placement.cores == frozenset({0, 1, 2}) and placement.cpu_nice == 0
    # A GPU pool has no cores to pin to; Ray's own niceness, on every thread.
    assert (front_door_placement(config, commercial).cores, front_door_placement(config, commercial).cpu_nice) == \
        (None, 15)
    overridden = load_config({**CONFIG, "ingress": {"cpu_nice": 5}})
    assert front_door_placement(overridden, overridden.domains()[0]).cpu_nice == 5


@pytest.mark.parametrize(("change", "message"), [
    ({"auth": {"key_file": "/keys/api-keys.json"}}, "auth.key_file: 2 isolation domains"),
    ({"auth": {"cache_salt_secret_file": "/keys/salt"}}, "auth.cache_salt_secret_file: 2 isolation domains"),
    ({"ledger": {"url": "postgresql://db/usage"}}, "ledger.url: 2 isolation domains"),
])
def test_one_secret_or_ledger_for_two_domains_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**CONFIG, **change})


def test_one_domain_may_use_plain_paths():
    one = {**CONFIG, "classes": {"government": {"pools": ["gov", "lab", "com"]}},
           "tenants": [CONFIG["tenants"][0]], "auth": {"key_file": "/keys/api-keys.json"},
           "ledger": {"url": "sqlite:////tmp/usage.db"}}
    assert [d.name for d in load_config(one).domains()] == ["government"]
