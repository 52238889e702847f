"""The config's energy and power-cap sections: what they accept, and each refusal naming its path."""

from __future__ import annotations

import pytest
import yaml

from serving.config import DEFAULT_CONFIG_PATH, ConfigError
from serving.config import load_config as _load
from serving.config.domains import domain_config

# The shipped config: two pools, the government and commercial domains.
BASE = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def load_config(data):
    return _load(data, check_library_settings=False)


def with_energy(**changes) -> dict:
    return {**BASE, **changes}


def test_defaults_meter_every_pool_and_cap_nothing():
    config = load_config(BASE)
    assert config.energy.sample_interval_s == 1.0 and config.power_caps == []
    assert all(p.power.counters == "auto" and p.power.floor == 1 for p in config.pools)


def test_caps_take_watts_with_units_and_resolve_their_scope():
    config = load_config(with_energy(power_caps=[
        {"name": "grid", "watts": "2.5kW", "scope": "platform"},
        {"name": "evening", "watts": 800, "scope": "domain:commercial", "until": "2026-12-02T19:00"},
        {"name": "one", "watts": "1.2 MW", "scope": "pool:government"}]))
    grid, evening, one = config.power_caps
    assert grid.watts == 2500 and one.watts == 1.2e6
    assert config.pools_in_scope(grid.scope) == {"government", "government-embeddings", "commercial"}
    assert config.pools_in_scope(evening.scope) == {"commercial"}
    assert evening.until_timestamp() is not None and grid.until_timestamp() is None
    # A domain's own cut carries its own caps and its share of the platform's (half each of
    # two domains with nothing measured yet), never a cap over another domain's pools.
    shares = {name: {c.name: (c.watts, c.scope) for c in domain_config(config, name).power_caps}
              for name in ("government", "commercial")}
    assert shares["commercial"] == {"grid": (1250.0, "domain:commercial"), "evening": (800, "domain:commercial")}
    assert shares["government"] == {"grid": (1250.0, "domain:government"), "one": (1.2e6, "pool:government")}


@pytest.mark.parametrize("cap, expected", [
    ({"name": "grid", "watts": "lots"}, "not a power"),
    ({"name": "grid", "watts": 0}, "positive"),
    ({"name": "grid", "watts": "2kW", "scope": "domain:research"}, "no such isolation domain"),
    ({"name": "grid", "watts": "2kW", "scope": "pool:nowhere"}, "no such deployed pool"),
    ({"name": "grid", "watts": "2kW", "scope": "everything"}, "use `platform`"),
    ({"name": "Grid Cap", "watts": "2kW"}, "lowercase"),
])
def test_bad_caps_are_refused_by_path(cap, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(with_energy(power_caps=[cap]))


def test_two_caps_of_one_name_are_refused():
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(with_energy(power_caps=[{"name": "grid", "watts": 1}, {"name": "grid", "watts": 2}]))


def test_a_floor_above_the_running_limit_is_refused():
    data = load_config(BASE).model_dump(by_alias=True, exclude_none=True)
    data["pools"][0]["power"] = {"floor": 999}
    with pytest.raises(ConfigError, match="power.floor 999 is above admission.max_running"):
        load_config(data)
