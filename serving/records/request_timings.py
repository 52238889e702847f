"""Where a finished request's time went: the numbers the ledger, the metrics and the trace share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """Where a finished request's time went, in seconds, as its client saw it.

    Args:
        queue_s: waiting for a slot in the pool.
        ttft_s: to the first token, queueing included; None when none came.
        latency_s: end to end, queueing included.
    """

    queue_s: float
    ttft_s: float | None
    latency_s: float

    def time_per_output_token_s(self, completion_tokens: int) -> float | None:
        """Mean time between output tokens after the first (None for fewer than two)."""
        if self.ttft_s is None or completion_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (completion_tokens - 1)
