"""An OTLP/gRPC trace receiver in the test process: what an OpenTelemetry Collector receives.

The server under test exports its spans with the real OTLP exporter (fabriek's, Ray Serve's
and vLLM's); this receiver keeps them so that tests can check whole traces.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened: ids as hex, attribute values as Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    resource: dict[str, Any]
    status_code: int
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(key_values) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


class OtlpCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Receives OTLP trace exports on ``endpoint`` until ``stop``."""

    def __init__(self, keep_spans: bool = True):
        """Args:
            keep_spans: keep every span for ``spans``/``wait_for``; False only counts them
                (a load test's sink, which must not cost the machine more than a collector would).
        """
        self._keep_spans = keep_spans
        self._count = 0
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802 (the OTLP service's method name)
        if not self._keep_spans:
            count = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
            with self._lock:
                self._count += count
            return trace_service_pb2.ExportTraceServiceResponse()
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name,
                        _attributes(span.attributes),
                        tuple((event.name, _attributes(event.attributes)) for event in span.events),
                        resource, span.status.code, span.start_time_unix_nano, span.end_time_unix_nano))
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span_count(self) -> int:
        with self._lock:
            return self._count + len(self._spans)

    def spans(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], root_parent_id: str | None = None,
                 timeout_s: float = 60.0) -> list[ReceivedSpan]:
        """The trace's spans once a span of each name prefix in ``names`` has arrived and,
        with ``root_parent_id``, every parent too (processes export on their own schedules:
        a child can arrive before its parent)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans(trace_id)
            missing = {n for n in names if not any(s.name.startswith(n) for s in spans)}
            ids = {s.span_id for s in spans} | {root_parent_id}
            if not missing and (root_parent_id is None or all(s.parent_span_id in ids for s in spans)):
                return spans
            if time.monotonic() > deadline:
                if missing:
                    raise AssertionError(f"trace {trace_id}: no span named {sorted(missing)} after "
                                         f"{timeout_s:.0f} s; got {sorted(s.name for s in spans)}")
                return spans  # the caller's tree check names the orphans
            time.sleep(0.2)

    def stop(self) -> None:
        self._server.stop(grace=None)
