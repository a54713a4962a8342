"""Traces with OpenTelemetry, off by default and free when off.

With ``FOUNDRY_TRACING=0`` (the default) :func:`current` is a no-op tracer:
its spans are one shared object and the OpenTelemetry SDK is never imported.
With ``FOUNDRY_TRACING=1`` :func:`setup` builds an SDK tracer provider for the
process (``service.name`` ``foundry-<service>``) exporting to
``FOUNDRY_OTEL_EXPORTER``: ``otlp`` (OTLP over HTTP to ``FOUNDRY_OTEL_ENDPOINT``;
needs the ``otlp`` extra), ``file`` (one JSON object per span, appended to
``FOUNDRY_OTEL_FILE``) or ``console``.

The trace context crosses processes as a W3C ``traceparent`` header on the NATS
message (the gateway sets it on a submitted task; a ``nats pub`` may set one):
:meth:`Tracer.inject` writes the current span's into a header mapping and the
``parent`` argument of :meth:`Tracer.span` / :meth:`Tracer.record` reads one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from foundry.errors import ConfigError
from foundry.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

TRACEPARENT = "traceparent"
Attributes = Mapping[str, str | int | float | bool]


class SpanHandle:
    """What a ``with tracer.span(...)`` block gets: set attributes as they become known."""

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        """No-op here; the recording span's handle stores the attribute."""


class _NoSpan(SpanHandle):
    def __enter__(self) -> SpanHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class Tracer:
    """The no-op tracer; :class:`OtelTracer` records."""

    enabled = False

    def span(
        self,
        name: str,
        *,
        parent: Mapping[str, str] | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> contextlib.AbstractContextManager[SpanHandle]:
        """A span around a block, current inside it (children nest under it)."""
        return _NO_SPAN

    def record(
        self,
        name: str,
        start: float,
        end: float,
        *,
        parent: Mapping[str, str] | None = None,
        attributes: Attributes | None = None,
    ) -> None:
        """A span that already happened, from ``start`` to ``end`` (Unix seconds)."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Write the current span's ``traceparent`` into ``headers``."""

    def shutdown(self) -> None:
        """Flush and close the exporter."""


_KINDS = ("internal", "server", "client", "producer", "consumer")


class OtelTracer(Tracer):
    """Spans recorded by an OpenTelemetry SDK tracer provider."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._closed = False
        self._tracer = provider.get_tracer("foundry")
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {k: getattr(trace.SpanKind, k.upper()) for k in _KINDS}

    def _context(self, parent: Mapping[str, str] | None) -> Any:
        if parent is None:
            return None  # the current context
        carrier = {k.lower(): v for k, v in parent.items() if k.lower() == TRACEPARENT}
        return self._propagator.extract(carrier)

    @contextlib.contextmanager
    def _span(
        self,
        name: str,
        parent: Mapping[str, str] | None,
        attributes: Attributes | None,
        kind: str,
    ) -> Iterator[SpanHandle]:
        with self._tracer.start_as_current_span(
            name,
            context=self._context(parent),
            kind=self._kinds.get(kind, self._kinds["internal"]),
            attributes=dict(attributes or {}),
        ) as span:
            yield _Recording(span)

    def span(
        self,
        name: str,
        *,
        parent: Mapping[str, str] | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> contextlib.AbstractContextManager[SpanHandle]:
        return self._span(name, parent, attributes, kind)

    def record(
        self,
        name: str,
        start: float,
        end: float,
        *,
        parent: Mapping[str, str] | None = None,
        attributes: Attributes | None = None,
    ) -> None:
        span = self._tracer.start_span(
            name,
            context=self._context(parent),
            attributes=dict(attributes or {}),
            start_time=int(start * 1e9),
        )
        span.end(end_time=int(max(start, end) * 1e9))

    def inject(self, headers: MutableMapping[str, str]) -> None:
        self._propagator.inject(headers)

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self.provider.shutdown()


class _Recording(SpanHandle):
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the file exporter writes it."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "service": (span.resource.attributes.get("service.name") if span.resource else None),
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name.lower(),
        "start": (span.start_time or 0) / 1e9,
        "end": (span.end_time or 0) / 1e9,
        "attributes": dict(span.attributes or {}),
    }


def _file_exporter(path: str) -> SpanExporter:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        """Appends each span as a line of JSON; one write per batch, so processes can share."""

        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(json.dumps(span_json(s), default=str) + "\n" for s in spans)
            with self._lock:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, lines.encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    return FileExporter()


def _exporter(settings: Settings) -> tuple[SpanExporter, bool]:
    """The configured exporter, and whether spans go out in batches."""
    kind = settings.otel_exporter
    if kind == "file":
        path = settings.otel_file or str(settings.data_dir / "traces.jsonl")
        return _file_exporter(path), False
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigError(
            "FOUNDRY_OTEL_EXPORTER=otlp needs the OTLP exporter: pip install "
            "'agent-foundry[otlp]' (or choose FOUNDRY_OTEL_EXPORTER=file or console)"
        ) from None
    endpoint = settings.otel_endpoint or "http://127.0.0.1:4318/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint), True


def build(service: str, exporter: SpanExporter, batch: bool = False) -> OtelTracer:
    """A recording tracer for ``service`` that hands finished spans to ``exporter``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"foundry-{service}"}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return OtelTracer(provider)


_current: Tracer = Tracer()


def current() -> Tracer:
    """This process's tracer (the no-op one unless tracing was set up)."""
    return _current


def install(tracer: Tracer) -> Tracer:
    """Make ``tracer`` this process's tracer; returns the one it replaces."""
    global _current
    previous, _current = _current, tracer
    return previous


def setup(settings: Settings, service: str) -> Tracer:
    """Set up tracing from the settings (ConfigError for an exporter that cannot work).

    Off, or already set up (a test installed one): the current tracer stays.
    """
    if not settings.tracing or _current.enabled:
        return _current
    try:
        exporter, batch = _exporter(settings)
    except ImportError as exc:
        raise ConfigError(
            f"FOUNDRY_TRACING=1 needs opentelemetry-sdk ({exc}); pip install opentelemetry-sdk"
        ) from None
    tracer = build(service, exporter, batch)
    atexit.register(tracer.shutdown)  # batched spans are sent before the process ends
    return install(tracer)
