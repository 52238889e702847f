"""An interval's measured joules divided among its requests: by weighted tokens, adding up to
the meter exactly; an idle interval's energy is the pool's; bad inputs are refused."""

from __future__ import annotations

import math
import random

import pytest

from routers.energy_attribution import IntervalWork, attribute


def test_shares_follow_weighted_tokens_and_add_up_to_the_meter():
    # Prefill tokens at a quarter of a decode token's time: a (400 prefilled) weighs 100,
    # b (100 decoded) 100, c (50 decoded) 50.
    result = attribute(250.0, {"a": IntervalWork(prefilled=400), "b": IntervalWork(decoded=100),
                               "c": IntervalWork(decoded=50)}, prefill_weight=0.25)
    assert result.requests == pytest.approx({"a": 100.0, "b": 100.0, "c": 50.0})
    assert math.fsum(result.requests.values()) == 250.0 and result.idle_joules == 0.0


def test_an_interval_without_work_is_idle_energy_of_the_pool():
    result = attribute(42.0, {"a": IntervalWork()}, prefill_weight=0.5)
    assert result.requests == {} and result.idle_joules == 42.0
    assert attribute(7.0, {}, prefill_weight=0.5).idle_joules == 7.0


def test_a_request_without_work_in_the_interval_gets_nothing():
    result = attribute(10.0, {"a": IntervalWork(decoded=3), "waiting": IntervalWork()}, prefill_weight=1.0)
    assert result.requests == {"a": 10.0}


def test_many_intervals_of_many_requests_add_up_exactly():
    generator = random.Random(7)
    for _ in range(200):
        work = {f"r{i}": IntervalWork(generator.randrange(0, 2000), generator.randrange(0, 64)) for i in range(50)}
        joules = generator.uniform(0, 5000)
        result = attribute(joules, work, prefill_weight=generator.uniform(0.01, 1))
        assert sum(result.requests.values()) + result.idle_joules == pytest.approx(joules, rel=1e-12)
        assert all(j >= 0 for j in result.requests.values())


@pytest.mark.parametrize(("joules", "weight"), [(-1.0, 0.5), (1.0, 0.0), (1.0, -2.0)])
def test_bad_inputs_are_refused(joules, weight):
    with pytest.raises(ValueError):
        attribute(joules, {"a": IntervalWork(decoded=1)}, prefill_weight=weight)
    with pytest.raises(ValueError):
        IntervalWork(prefilled=-1)
