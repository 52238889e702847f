"""The one percentile every benchmark here reports: nearest rank on the sorted values."""

from __future__ import annotations


def percentile(values, q: float) -> float:
    """The value at quantile ``q`` (0 to 1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
