"""A platform power cap split into per-domain shares (routers.power_shares), table-driven."""

from __future__ import annotations

import pytest

from routers.power_shares import DomainPowerDemand, split_cap
from routers.tenants import TenantClass

GOV, COM, RES = TenantClass.GOVERNMENT, TenantClass.COMMERCIAL, TenantClass.RESEARCH


def _demands(*rows):
    return [DomainPowerDemand(name, cls, floor, drawn) for name, cls, floor, drawn in rows]


@pytest.mark.parametrize("watts, rows, expected", [
    # Nothing measured (start-up): equal shares above the floors.
    (1000, [("government", GOV, 0, None), ("commercial", COM, 0, None)], {"government": 500, "commercial": 500}),
    (1000, [("government", GOV, 100, None), ("commercial", COM, 300, None)],
     {"government": 400, "commercial": 600}),
    # Government's present draw (+5%) comes before commercial's; the rest is shared.
    (1000, [("government", GOV, 0, 600), ("commercial", COM, 0, 600)], {"government": 630, "commercial": 370}),
    # Under the cap together: both get their draw, and half the spare each.
    (1000, [("government", GOV, 0, 200), ("commercial", COM, 0, 300)],
     {"government": 210 + 237.5, "commercial": 315 + 237.5}),
    # Floors that do not fit are scaled down together.
    (300, [("government", GOV, 200, 500), ("commercial", COM, 400, 500)], {"government": 100, "commercial": 200}),
    # Research sits between government and commercial.
    (1000, [("commercial", COM, 0, 900), ("research", RES, 0, 500), ("government", GOV, 0, 400)],
     {"government": 420, "research": 525, "commercial": 55}),
])
def test_split(watts, rows, expected):
    shares = split_cap(watts, _demands(*rows))
    assert shares == pytest.approx(expected)
    assert sum(shares.values()) == pytest.approx(watts)


@pytest.mark.parametrize("watts, rows", [
    (0, [("government", GOV, 0, None)]),
    (-5, [("government", GOV, 0, None)]),
    (100, []),
    (100, [("government", GOV, 0, None), ("government", GOV, 0, None)]),
])
def test_refused(watts, rows):
    with pytest.raises(ValueError):
        split_cap(watts, _demands(*rows))


def test_a_hostile_draw_report_cannot_take_more_than_the_cap():
    shares = split_cap(1000, _demands(("commercial", COM, 0, 1e12), ("government", GOV, 0, float("nan"))))
    assert sum(shares.values()) == pytest.approx(1000) and all(s >= 0 for s in shares.values())
