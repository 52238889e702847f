"""The power budget on synthetic meter traces (no hardware counter on the build machine: the
traces are written here, interval by interval, as an engine's meter would report them):
over a cap, commercial pools give first, then research, government last and never below
its floor; under it, limits come back government first; unmetered pools are left alone."""

from __future__ import annotations

import pytest

from routers.power_budget import PoolPowerSpec, PoolSample, PowerBudget, PowerCap, parse_watts
from routers.tenants import TenantClass

GOV, RES, COM = TenantClass.GOVERNMENT, TenantClass.RESEARCH, TenantClass.COMMERCIAL
POOLS = [PoolPowerSpec("gov", GOV, max_running=32, floor=8, idle_watts=100),
         PoolPowerSpec("lab", RES, max_running=32, floor=2, idle_watts=100),
         PoolPowerSpec("pilot", COM, max_running=32, floor=1, idle_watts=100)]
EVERYWHERE = frozenset({"gov", "lab", "pilot"})


def sample(running: float, watts_per_request: float = 20.0, idle: float = 100.0) -> PoolSample:
    """What the meter reports of a pool running ``running`` requests at that cost each."""
    return PoolSample(watts=idle + running * watts_per_request, running=running)


def full_load() -> dict[str, PoolSample]:
    return {"gov": sample(32), "lab": sample(32), "pilot": sample(32)}  # 3 x 740 W = 2220 W


def test_without_a_cap_every_pool_keeps_its_configured_limit():
    budget = PowerBudget(POOLS)
    decision = budget.update(full_load(), [], now=0)
    assert decision.limits == {"gov": 32, "lab": 32, "pilot": 32} and decision.binding == ()


def test_a_cap_cuts_commercial_first_and_just_enough():
    budget = PowerBudget(POOLS)
    cap = PowerCap(2000, EVERYWHERE)
    decision = budget.update(full_load(), [cap], now=0)
    # 220 W over at 20 W a request: 11 fewer commercial requests, nobody else touched.
    assert decision.limits == {"gov": 32, "lab": 32, "pilot": 21}
    assert decision.binding == ("platform",)


def test_a_deep_cap_takes_commercial_to_its_floor_then_research_and_government_last():
    budget = PowerBudget(POOLS)
    # 1000 W: 1220 W over, 61 requests; commercial gives 31, research 30, government nothing.
    assert budget.update(full_load(), [PowerCap(1000, EVERYWHERE)], now=0).limits == \
        {"gov": 32, "lab": 2, "pilot": 1}
    budget = PowerBudget(POOLS)
    # 600 W: commercial and research at their floors draw 260 W; government keeps what fits
    # in the rest, 12 requests (100 + 12 x 20 W), above its floor of 8.
    assert budget.update(full_load(), [PowerCap(600, EVERYWHERE)], now=0).limits == \
        {"gov": 12, "lab": 2, "pilot": 1}
    budget = PowerBudget(POOLS)
    # 400 W is below what the floors alone draw (520 W): every pool ends at its floor.
    assert budget.update(full_load(), [PowerCap(400, EVERYWHERE)], now=0).limits == \
        {"gov": 8, "lab": 2, "pilot": 1}


def test_limits_come_back_government_first_once_under_the_cap_with_headroom():
    budget = PowerBudget(POOLS, headroom=0.05)
    cap = PowerCap(1000, EVERYWHERE)
    budget.update({"gov": sample(32), "lab": sample(32), "pilot": sample(32)}, [cap], now=0)
    # Load fell: the pools now draw 100 + 8x20 (gov), 100 + 2x20, 100 + 1x20 = 520 W.
    decision = budget.update({"gov": sample(8), "lab": sample(2), "pilot": sample(1)}, [cap], now=1)
    # 950 W usable - 520 W = 430 W spare, 21 requests: government is at 32 already, research
    # takes 21 (from 2 to 23), commercial stays at 1.
    assert decision.limits == {"gov": 32, "lab": 23, "pilot": 1}


def test_a_cap_over_one_domain_leaves_the_other_domains_pools_alone():
    budget = PowerBudget(POOLS)
    commercial_domain = PowerCap(500, frozenset({"pilot"}), name="domain:commercial")
    decision = budget.update(full_load(), [commercial_domain], now=0)
    assert decision.limits == {"gov": 32, "lab": 32, "pilot": 20}  # 740 W - 500 W = 12 requests
    assert decision.binding == ("domain:commercial",)


def test_the_lowest_limit_of_several_caps_holds():
    budget = PowerBudget(POOLS)
    caps = [PowerCap(2100, EVERYWHERE), PowerCap(600, frozenset({"pilot"}), name="pool:pilot")]
    assert budget.update(full_load(), caps, now=0).limits["pilot"] == 25  # platform: 26; pool: 25


def test_a_cap_ends_at_its_time_and_limits_return():
    budget = PowerBudget(POOLS)
    cap = PowerCap(1500, EVERYWHERE, until=19 * 3600)
    assert budget.update(full_load(), [cap], now=18 * 3600).limits["pilot"] < 32
    assert budget.update(full_load(), [cap], now=19 * 3600).limits == {"gov": 32, "lab": 32, "pilot": 32}


def test_within_a_class_the_costliest_pool_gives_first():
    pools = [PoolPowerSpec("a", COM, max_running=10), PoolPowerSpec("b", COM, max_running=10)]
    budget = PowerBudget(pools)
    # a: 10 requests at 10 W, b: 10 at 50 W; 100 W over: b gives 2, a nothing.
    decision = budget.update({"a": sample(10, 10, idle=0), "b": sample(10, 50, idle=0)},
                             [PowerCap(500, frozenset({"a", "b"}))], now=0)
    assert decision.limits == {"a": 10, "b": 8}


def test_a_noisy_interval_moves_the_learned_cost_only_part_of_the_way():
    budget = PowerBudget(POOLS)
    budget.update({"pilot": sample(10, 20)}, [], now=0)
    budget.update({"pilot": sample(10, 120)}, [], now=1)  # one interval of 120 W a request
    assert budget.watts_per_request("pilot") == pytest.approx(0.7 * 20 + 0.3 * 120)


def test_a_pool_without_a_counter_is_reported_and_left_at_its_limit():
    budget = PowerBudget(POOLS)
    samples = {**full_load(), "pilot": PoolSample(watts=None, running=32)}
    decision = budget.update(samples, [PowerCap(1000, EVERYWHERE)], now=0)
    assert decision.unmetered == ("pilot",)
    assert decision.limits["pilot"] == 32  # not measured: not cut on a guess
    assert decision.limits["lab"] < 32  # the metered pools still keep the cap


@pytest.mark.parametrize(("text", "watts"), [("2.5kW", 2500.0), ("800 W", 800.0), ("1.2MW", 1.2e6), ("3kw", 3000.0)])
def test_power_is_written_with_its_unit(text, watts):
    assert parse_watts(text) == watts


@pytest.mark.parametrize("text", ["2.5", "kW", "-1kW", "0W", "1e3W", "2.5 kilowatt"])
def test_anything_else_is_refused_by_example(text):
    with pytest.raises(ValueError, match="power"):
        parse_watts(text)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="floor"):
        PoolPowerSpec("p", COM, max_running=4, floor=5)
    with pytest.raises(ValueError, match="positive"):
        PowerCap(0, EVERYWHERE)
    with pytest.raises(ValueError, match="covers no pool"):
        PowerCap(100, frozenset())
    with pytest.raises(KeyError, match="unknown pools"):
        PowerBudget(POOLS).update({}, [PowerCap(100, frozenset({"nowhere"}))], now=0)


def test_until_a_clock_time_is_the_next_one():
    import datetime

    from routers.power_budget import parse_until

    zone = datetime.timezone(datetime.timedelta(hours=1))
    afternoon = datetime.datetime(2026, 12, 2, 17, 30, tzinfo=zone)
    assert parse_until("19:00", afternoon) == datetime.datetime(2026, 12, 2, 19, 0, tzinfo=zone)
    assert parse_until("09:00", afternoon) == datetime.datetime(2026, 12, 3, 9, 0, tzinfo=zone)  # tomorrow
    assert parse_until("2026-12-04T08:15", afternoon) == datetime.datetime(2026, 12, 4, 8, 15, tzinfo=zone)
    for bad in ("7pm", "25:00", "2026-12-01T10:00", ""):
        with pytest.raises(ValueError):
            parse_until(bad, afternoon)
