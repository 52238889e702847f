"""OpenTelemetry tracing: one trace per request, from the front door to vLLM's engine.

Ray Serve already traces its own data path once it is given a ``TracingConfig``: it reads
W3C ``traceparent`` from HTTP headers and gRPC metadata at the ingress replica, opens a
span per replica call and per handle call (``route_to_replica ...``), and carries the
context across processes. fabriek adds what only it knows, as a span per request in the
ingress (pool, tenant class, model, token counts, queue time, in GenAI semantic-convention
names where they exist) with the admission step beneath it, and hands the context on to
vLLM, whose own ``llm_request`` span (queue, prefill and decode times) then joins the trace.

Tracing is configured the standard way, by ``OTEL_*`` environment variables, and is off
unless an OTLP endpoint (or ``OTEL_TRACES_EXPORTER=console``) is set: when off, no tracer
provider is installed and every call here costs a flag check. Spans never carry prompt or
completion text.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, ContextManager, Mapping

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from serving.records.request_timings import Timings

if TYPE_CHECKING:
    from ray.serve.schema import TracingConfig

# Ray Serve calls this (a function of no arguments) in every replica and proxy process.
EXPORTER_IMPORT_PATH = "serving.records.tracing:span_processors"
# "off": fabriek's and Ray Serve's spans only, none from vLLM's engines.
VLLM_TRACES_ENV = "FABRIEK_VLLM_TRACES"
GRPC, HTTP_PROTOBUF = "grpc", "http/protobuf"
# The service name of fabriek's spans unless OTEL_SERVICE_NAME says otherwise.
DEFAULT_SERVICE_NAME = "fabriek"
_SAMPLERS_WITH_RATIO = ("traceidratio", "parentbased_traceidratio")

_tracer = trace.get_tracer("fabriek")


def traces_exporter(environ: Mapping[str, str]) -> str | None:
    """Where this process sends spans, by the OTEL_* variables: ``otlp``, ``console`` or None (off)."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named in ("none", "console"):
        return None if named == "none" else "console"
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP protocol for traces (``grpc`` unless the variables say ``http/protobuf``)."""
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or GRPC)
    if protocol not in (GRPC, HTTP_PROTOBUF):
        raise ValueError(f"OTLP protocol {protocol!r} is not supported: use {GRPC} or {HTTP_PROTOBUF}")
    return protocol


def otlp_traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """The full OTLP traces endpoint, as the SDK derives it (``/v1/traces`` is appended to a
    general endpoint for http/protobuf); None when tracing does not go to OTLP."""
    if traces_exporter(environ) != "otlp":
        return None
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if otlp_protocol(environ) == HTTP_PROTOBUF:
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def sampling_ratio(environ: Mapping[str, str]) -> float:
    """The share of new traces to keep: ``OTEL_TRACES_SAMPLER_ARG`` for a ratio sampler, else
    all. Ray Serve samples parent-based: a request whose ``traceparent`` says sampled is kept."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in _SAMPLERS_WITH_RATIO:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be within [0, 1], not {ratio}")
        return ratio
    return 1.0


def describe(environ: Mapping[str, str]) -> str:
    """One line for the operator: where spans go, or how to turn tracing on."""
    exporter = traces_exporter(environ)
    if exporter is None:
        return "off (set OTEL_EXPORTER_OTLP_ENDPOINT to send OpenTelemetry traces)"
    if exporter == "console":
        return "to each process's stdout (OTEL_TRACES_EXPORTER=console)"
    engines = "" if vllm_tracing(environ)[0] else f" (none from vLLM: {VLLM_TRACES_ENV}=off)"
    return (f"OTLP {otlp_protocol(environ)} to {otlp_traces_endpoint(environ)}, "
            f"sampling {sampling_ratio(environ):.0%} of new traces{engines}")


def serve_tracing_config(environ: Mapping[str, str]) -> "TracingConfig | None":
    """Ray Serve's tracing settings for these variables; None when tracing is off."""
    from ray.serve.schema import TracingConfig

    if traces_exporter(environ) is None:
        return None
    return TracingConfig(enabled=True, exporter_import_path=EXPORTER_IMPORT_PATH,
                         sampling_ratio=sampling_ratio(environ))


def span_processors() -> list[Any]:
    """The span processors of this process (Ray Serve installs them on its tracer provider).

    Batched: spans leave on a background thread, never on a request's path. The exporter
    reads its endpoint, headers, timeout and TLS settings from the OTEL_* variables itself.
    """
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter = traces_exporter(os.environ)
    if exporter == "console":
        return [BatchSpanProcessor(ConsoleSpanExporter())]
    if exporter is None:
        return []
    if otlp_protocol(os.environ) == HTTP_PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return [BatchSpanProcessor(OTLPSpanExporter())]


_provider_seen: object = None
_provider_records = False


def is_tracing() -> bool:
    """Whether this process records spans (Ray Serve installed an SDK tracer provider)."""
    global _provider_seen, _provider_records
    provider = trace.get_tracer_provider()
    if provider is not _provider_seen:  # checked once per provider: on every request when off
        _provider_seen = provider
        _provider_records = type(provider).__module__.startswith("opentelemetry.sdk")
    return _provider_records


def start_request_span(operation: str, model: str | None, protocol: str) -> Span:
    """The span of one request in the ingress, named ``{operation} {model}`` as the GenAI
    conventions ask; a do-nothing span when tracing is off. End it with ``end_request_span``."""
    if not is_tracing():
        return INVALID_SPAN
    return _tracer.start_span(f"{operation} {model or ''}".strip(), kind=SpanKind.INTERNAL, attributes={
        "gen_ai.operation.name": operation, "gen_ai.request.model": model or "",
        "gen_ai.provider.name": "fabriek", "fabriek.protocol": protocol})


def activated(span: Span, end_on_exit: bool = False) -> ContextManager[Span]:
    """``trace.use_span``: ``span`` is the current span within; nothing at all when tracing is off."""
    if span is INVALID_SPAN:
        return contextlib.nullcontext(span)
    return trace.use_span(span, end_on_exit=end_on_exit)


def start_admission_span() -> Span:
    """The span of the admission step (quota, fair queue, usage record) of the current request."""
    if not is_tracing():
        return INVALID_SPAN
    return _tracer.start_span("fabriek.admission", kind=SpanKind.INTERNAL)


def mark_admitted(span: Span, *, request_id: str, pool: str, tenant_class: str, model: str,
                  max_tokens: int) -> None:
    if span.is_recording():
        span.set_attributes({"fabriek.request_id": request_id, "fabriek.pool": pool,
                             "fabriek.tenant_class": tenant_class, "gen_ai.request.model": model,
                             "gen_ai.request.max_tokens": max_tokens})


def mark_admission(span: Span, *, queue_s: float | None = None, refused_for: str | None = None) -> None:
    """The admission step's outcome: the time queued for a slot, or the refusal's reason."""
    if not span.is_recording():
        return
    if queue_s is not None:
        span.set_attribute("fabriek.queue_time_s", queue_s)
    if refused_for is not None:
        span.set_attribute("fabriek.rejection.reason", refused_for)


def mark_refused(span: Span, reason: str, status: int) -> None:
    """A refused request: its reason is the error type, as the conventions ask."""
    if span.is_recording():
        span.set_attributes({"error.type": reason, "fabriek.status_code": status})
        span.set_status(Status(StatusCode.ERROR, reason))


def end_request_span(span: Span, *, status: int, prompt_tokens: int, completion_tokens: int,
                     timings: Timings, replica: str | None) -> None:
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {"fabriek.status_code": status, "gen_ai.usage.input_tokens": prompt_tokens,
                                  "gen_ai.usage.output_tokens": completion_tokens,
                                  "fabriek.queue_time_s": timings.queue_s}
    if timings.ttft_s is not None:
        attributes["fabriek.time_to_first_token_s"] = timings.ttft_s
    tpot_s = timings.time_per_output_token_s(completion_tokens)
    if tpot_s is not None:
        attributes["fabriek.time_per_output_token_s"] = tpot_s
    if replica is not None:
        attributes["fabriek.replica"] = replica
    span.set_attributes(attributes)
    if status >= 400 and status != 499:
        span.set_status(Status(StatusCode.ERROR, str(status)))
    span.end()


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits) for the usage record, or None when untraced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def vllm_tracing(environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """vLLM's engine arguments and environment for its own request spans to join fabriek's
    traces: the same OTLP endpoint and protocol (vLLM reads only the traces-specific
    variable). Nothing when tracing is off, does not go to OTLP, or
    ``FABRIEK_VLLM_TRACES=off`` keeps vLLM's spans (and its exporters in every engine
    process) out."""
    endpoint = otlp_traces_endpoint(environ)
    if endpoint is None or environ.get(VLLM_TRACES_ENV, "on").strip().lower() == "off":
        return {}, {}
    return {"otlp_traces_endpoint": endpoint}, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": otlp_protocol(environ)}


def trace_headers() -> dict[str, str]:
    """W3C headers of the current span, for vLLM (which reads them off the request)."""
    if not is_tracing():
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier
