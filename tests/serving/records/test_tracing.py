"""Tracing settings from the standard OTEL_* variables (the spans themselves: test_e2e_tracing.py)."""

from __future__ import annotations

import pytest
from opentelemetry.trace import INVALID_SPAN

from serving.records import tracing

COLLECTOR = "http://otel-collector:4317"


@pytest.mark.parametrize("environ, exporter", [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": COLLECTOR}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR, "OTEL_TRACES_EXPORTER": "none"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR, "OTEL_SDK_DISABLED": "true"}, None),
], ids=["nothing-set", "endpoint", "traces-endpoint", "console", "exporter-none", "sdk-disabled"])
def test_tracing_is_off_unless_an_exporter_is_configured(environ, exporter):
    assert tracing.traces_exporter(environ) == exporter
    assert (tracing.serve_tracing_config(environ) is None) == (exporter is None)


def test_http_protobuf_endpoint_gets_the_traces_path_as_the_sdk_does():
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert tracing.otlp_traces_endpoint(environ) == "http://collector:4318/v1/traces"
    assert tracing.otlp_traces_endpoint({**environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/t"}) == "http://x/t"
    assert tracing.otlp_traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}) == COLLECTOR


def test_unsupported_protocol_is_a_clear_error():
    with pytest.raises(ValueError, match="http/json.*not supported"):
        tracing.otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.parametrize("environ, ratio", [
    ({}, 1.0),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, 0.1),
    ({"OTEL_TRACES_SAMPLER": "traceidratio"}, 1.0),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
])
def test_sampling_ratio_follows_the_standard_sampler_variables(environ, ratio):
    assert tracing.sampling_ratio(environ) == ratio


def test_sampling_ratio_out_of_range_is_refused():
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        tracing.sampling_ratio({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})


def test_serve_tracing_config_points_ray_at_fabrieks_exporter():
    config = tracing.serve_tracing_config({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR,
                                           "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                           "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert (config.enabled, config.exporter_import_path, config.sampling_ratio) == (
        True, "serving.records.tracing:span_processors", 0.5)


def test_vllm_gets_the_same_endpoint_and_protocol_or_nothing():
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert tracing.vllm_tracing(environ) == ({"otlp_traces_endpoint": "http://collector:4318/v1/traces"},
                                             {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert tracing.vllm_tracing({"OTEL_TRACES_EXPORTER": "console"}) == ({}, {})
    assert tracing.vllm_tracing({}) == ({}, {})


def test_vllm_spans_can_be_left_out_of_traces():
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "FABRIEK_VLLM_TRACES": "off"}
    assert tracing.vllm_tracing(environ) == ({}, {})
    assert "none from vLLM" in tracing.describe(environ)
    assert "vLLM" not in tracing.describe({**environ, "FABRIEK_VLLM_TRACES": "on"})


@pytest.mark.parametrize("environ, exporter_class", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}, "opentelemetry.exporter.otlp.proto.grpc"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     "opentelemetry.exporter.otlp.proto.http"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "opentelemetry.sdk.trace.export"),
])
def test_span_processors_batch_to_the_configured_exporter(monkeypatch, environ, exporter_class):
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    [processor] = tracing.span_processors()
    assert isinstance(processor, BatchSpanProcessor)
    assert type(processor._batch_processor._exporter).__module__.startswith(exporter_class)
    processor.shutdown()


def test_spans_cost_nothing_while_tracing_is_off():
    # This test process installs no tracer provider, as a server without OTEL_* variables.
    assert not tracing.is_tracing()
    assert tracing.start_request_span("chat", "m", "http") is INVALID_SPAN
    assert tracing.trace_headers() == {}


def test_describe_tells_how_to_turn_tracing_on():
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in tracing.describe({})
    assert tracing.describe({"OTEL_EXPORTER_OTLP_ENDPOINT": COLLECTOR}) == (
        f"OTLP grpc to {COLLECTOR}, sampling 100% of new traces")
