"""Dividing an engine's measured energy over one interval among the requests that ran in it.

The rule (docs: energy per request):

- An interval's joules are the meter's counter delta for the engine's hardware
  (``serving.engine.energy_meter``), nothing estimated.
- Each request that ran in the interval did some work: the prompt tokens it prefilled and
  the tokens it decoded there. A prefill token costs the engine less time than a decode
  token; ``prefill_weight`` is that ratio, measured from the engine's own step times
  (time per prefill token over time per decode token).
- A request's share is its ``prefill_weight * prefilled + decoded`` over the sum of all
  requests' in the interval. An interval in which nothing ran is idle: its energy belongs to
  the pool (reported as idle), not to a request.

So the requests' joules plus the idle joules add up to what the meter counted, exactly
(up to floating point: the last share takes the remainder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class IntervalWork:
    """What one request did in one interval.

    Args:
        prefilled: prompt tokens it prefilled in the interval.
        decoded: tokens it generated in the interval.
    """

    prefilled: int = 0
    decoded: int = 0

    def __post_init__(self) -> None:
        if self.prefilled < 0 or self.decoded < 0:
            raise ValueError(f"token counts cannot be negative: {self}")


@dataclass(frozen=True)
class Attribution:
    """One interval's energy, divided.

    Args:
        requests: request id -> joules.
        idle_joules: the interval's energy with no request to carry it.
    """

    requests: dict[str, float]
    idle_joules: float


def attribute(joules: float, work: Mapping[str, IntervalWork], prefill_weight: float) -> Attribution:
    """Divide ``joules`` among the requests of ``work`` by the module's rule.

    Raises:
        ValueError: negative joules or a prefill weight that is not positive.
    """
    if not prefill_weight > 0:
        raise ValueError(f"prefill_weight must be positive, not {prefill_weight}")
    return divide(joules, {rid: work_weight(w.prefilled, w.decoded, prefill_weight) for rid, w in work.items()})


def work_weight(prefilled: int, decoded: int, prefill_weight: float) -> float:
    """One request's work in an interval, in decode tokens' worth (the rule above)."""
    return prefill_weight * prefilled + decoded


def divide(joules: float, weights: Mapping[str, float]) -> Attribution:
    """Divide ``joules`` in proportion to ``weights`` (``work_weight`` of each request); no
    weight at all: the interval was idle.

    Raises:
        ValueError: negative joules.
    """
    if joules < 0:
        raise ValueError(f"an interval's energy cannot be negative: {joules} J")
    total = sum(weights.values())
    if total <= 0:
        return Attribution({}, joules)
    shares: dict[str, float] = {}
    given = 0.0
    working = [rid for rid, weight in weights.items() if weight > 0]
    for rid in working[:-1]:
        shares[rid] = joules * weights[rid] / total
        given += shares[rid]
    shares[working[-1]] = joules - given  # the remainder: the shares add up to the meter
    return Attribution(shares, 0.0)
