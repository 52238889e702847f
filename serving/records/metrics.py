"""The platform's Prometheus metrics, exported by Ray beside vLLM's and Ray Serve's own.

Ray's metrics agent on every node serves them on its Prometheus endpoint (``fabriek serve``
fixes its port: ``local.metrics_export_port``); on a cluster, the chart's PodMonitor scrapes
the same endpoint. Ray prefixes each name with ``ray_``. Labels are pool, tenant class,
model and outcome: never a tenant id or anything of a prompt, to keep cardinality bounded
and content out.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

from serving.records.request_timings import Timings

_LABELS = ("pool", "tenant_class", "model")
# Seconds: CPU time-to-first-token is tens of ms; a GPU queue under load can reach tens of s.
_LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
# A decode step: ~10 ms on a GPU, ~20-100 ms for the small default model on a CPU.
_TPOT_BUCKETS = [0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1]
_QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30]


class PlatformMetrics:
    """Request, token, latency and rejection metrics of the ingress (one per replica)."""

    def __init__(self):
        self.requests = Counter("fabriek_requests", "Finished requests by outcome (HTTP-style status code).",
                                tag_keys=(*_LABELS, "status"))
        self.tokens = Counter("fabriek_tokens", "Tokens processed, by kind (prompt or completion).",
                              tag_keys=(*_LABELS, "kind"))
        self.rejections = Counter("fabriek_rejections", "Requests refused by admission, by reason.",
                                  tag_keys=(*_LABELS, "reason"))
        self.ttft = Histogram("fabriek_time_to_first_token_seconds", "Time to the first token.",
                              boundaries=_LATENCY_BUCKETS, tag_keys=_LABELS)
        self.tpot = Histogram("fabriek_time_per_output_token_seconds",
                              "Mean time between output tokens after the first, per request.",
                              boundaries=_TPOT_BUCKETS, tag_keys=_LABELS)
        self.latency = Histogram("fabriek_request_latency_seconds", "End-to-end latency of a request.",
                                 boundaries=_LATENCY_BUCKETS, tag_keys=_LABELS)
        self.energy = Counter("fabriek_energy_joules",
                              "Measured energy attributed to finished requests (docs/energy.md).",
                              tag_keys=_LABELS)
        self.queue_time = Histogram("fabriek_queue_time_seconds", "Time waiting for a slot in the pool.",
                                    boundaries=_QUEUE_BUCKETS, tag_keys=_LABELS)

    def observe_rejection(self, labels: dict[str, str], reason: str, status: int) -> None:
        self.rejections.inc(1, {**labels, "reason": reason})
        self.requests.inc(1, {**labels, "status": str(status)})

    def observe_finished(self, labels: dict[str, str], status: int, *, prompt_tokens: int,
                         completion_tokens: int, timings: Timings, energy_j: float | None = None) -> None:
        self.requests.inc(1, {**labels, "status": str(status)})
        if energy_j:
            self.energy.inc(energy_j, labels)
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, {**labels, "kind": "prompt"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, {**labels, "kind": "completion"})
        self.queue_time.observe(timings.queue_s, labels)
        if timings.ttft_s is not None:
            self.ttft.observe(timings.ttft_s, labels)
        tpot_s = timings.time_per_output_token_s(completion_tokens)
        if tpot_s is not None:
            self.tpot.observe(tpot_s, labels)
        self.latency.observe(timings.latency_s, labels)
