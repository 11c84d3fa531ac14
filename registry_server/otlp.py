"""Gateway calls as OpenTelemetry spans, exported over OTLP/HTTP when `otlp_endpoint` is set.

Nothing is loaded or sent when it is not set. When it is, each gateway call of a trace its caller
sampled (W3C `traceparent` flag 01: parent-based sampling, as the specification has it) becomes one
span, child of the caller's span, with the agent, tool, replica and outcome as attributes; the span's
own id is the parent the agent receives in its request's `_meta.traceparent`. The SDK batches spans
and sends them from its own thread, so the call path only starts and ends a span.
"""

from __future__ import annotations

from typing import Any

from mcpz.errors import UsageError
from mcpz.tracing import TraceParent

SERVICE = "mcpz-registry"


class CallSpans:
    def __init__(self, endpoint: str, *, service: str = SERVICE, delay_ms: int = 1000) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise UsageError(
                "otlp_endpoint is set but OpenTelemetry is not installed",
                hint="pip install 'mcpz[otel]', or unset MCPZ_REGISTRY_OTLP_ENDPOINT",
            ) from None
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=10), schedule_delay_millis=delay_ms)
        )
        self.tracer = self.provider.get_tracer("mcpz.gateway")

    def start(self, parent: TraceParent, name: str, attributes: dict[str, str]) -> tuple[Any, TraceParent]:
        """A span under the caller's span `parent` (remote); (span, the traceparent naming it)."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        remote = SpanContext(
            trace_id=int(parent.trace_id, 16),
            span_id=int(parent.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(parent.flags),
        )
        context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        own = span.get_span_context()
        return span, TraceParent(parent.trace_id, f"{own.span_id:016x}", parent.flags)

    @staticmethod
    def end(span: Any, outcome: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("mcpz.outcome", outcome)
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()

    def close(self) -> None:
        self.provider.shutdown()
