"""OTLP export: a gateway and a worker process with ``FOUNDRY_OTEL_EXPORTER=otlp`` POST their
spans to a collector on 127.0.0.1 (a stand-in for the outside one, decoding the protobuf), and
the spans make one trace: gateway submit → worker task → queue wait, handler run, result
store, with their parent links and attributes.

The exporter is the optional extra ``otlp`` (``make install`` brings it): without it the test
skips saying so, and fails under ``CI=true``.
"""

from __future__ import annotations

import gzip
import importlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, web

from foundry.connect import connect_nats
from foundry.natsauth import GATEWAY
from foundry.provision import provision
from foundry.servers import free_port
from foundry.settings import Settings
from tests.conftest import ApiTokens, eventually
from tests.fakes import serve
from tests.procs import ProcessGroup
from tests.sse import SMALL_STREAMS

OTLP_MODULES = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
)
WORKER_SPANS = ("task", "queue wait", "handler run", "result store")
# the SDK's batch processor sends every 5 s by default; its own variable makes it quicker
QUICK_BATCHES = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


def require_otlp() -> None:
    """Skip (fail under CI=true) unless the OTLP/HTTP exporter and its protobuf are here."""
    try:
        for module in OTLP_MODULES:
            importlib.import_module(module)
    except ImportError as exc:
        why = (
            f"the OTLP exporter is missing ({exc}): pip install 'agent-foundry[otlp]' "
            "(make install does)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


@dataclass
class Collector:
    """Answers OTLP/HTTP ``POST /v1/traces`` (protobuf) and keeps every span it decoded."""

    spans: list[Span] = field(default_factory=list)
    posts: list[dict[str, str]] = field(default_factory=list)

    async def traces(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.posts.append(dict(request.headers))
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"not protobuf: {request.content_type}")
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=ProtoSpan.SpanKind.Name(span.kind),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                        )
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        return app

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def _attributes(items: Any) -> dict[str, Any]:
    """OTLP KeyValue list → dict (string, int, double and bool values)."""
    out: dict[str, Any] = {}
    for item in items:
        which = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, which) if which else None
    return out


async def test_gateway_and_worker_export_one_trace_over_otlp_http(
    make_settings: Callable[..., Settings], procs: ProcessGroup, api_tokens: ApiTokens
) -> None:
    require_otlp()
    collector = Collector()
    async with serve(collector.app()) as url:
        # Given a gateway and a worker process tracing with the OTLP/HTTP exporter to a
        # collector on loopback
        settings = make_settings(**SMALL_STREAMS,
            fleet={"coder": 1}, handlers={"coder": "echo"}, gateway_port=free_port(),
            tracing=True, otel_exporter="otlp", otel_endpoint=f"{url}/v1/traces",
        )  # fmt: skip
        conn = await connect_nats(settings, "provision")  # as a healer does before its fleet
        try:
            await provision(conn.jetstream(), settings)
        finally:
            await conn.close()
        procs.start(["-m", "gateway"], settings, "gateway", GATEWAY, **QUICK_BATCHES)
        procs.worker(settings, "coder", **QUICK_BATCHES)
        base = f"http://127.0.0.1:{settings.gateway_port}"
        async with ClientSession(headers=api_tokens.header(api_tokens.admin)) as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except OSError:
                    return False

            await eventually(healthy, 30, interval=0.2)
            # When a task is submitted through the gateway and completes
            body = {"agent_type": "coder", "description": "trace me", "task_id": "otlp-1"}
            async with http.post(f"{base}/api/cluster/task/submit", json=body) as resp:
                assert resp.status == 202, await resp.text()
            async with http.get(f"{base}/api/cluster/task/otlp-1?wait=30") as resp:
                record = await resp.json()
            assert record["status"] == "completed", (record, procs.logs())

        # Then the collector received the spans of both processes as protobuf
        def arrived() -> bool:
            names = {s.name for s in collector.spans if s.attributes.get("task.id") == "otlp-1"}
            return {"submit", *WORKER_SPANS} <= names

        try:
            await eventually(arrived, 20, interval=0.1)
        except AssertionError:
            raise AssertionError(f"spans: {collector.spans}\n{procs.logs()}") from None
    assert all(p.get("Content-Type") == "application/x-protobuf" for p in collector.posts)
    # and they are one trace: the gateway's submit is the root, the worker's task its child,
    # the task's steps children of the task
    (submit,) = [s for s in collector.named("submit") if s.attributes["task.id"] == "otlp-1"]
    assert submit.service == "foundry-gateway" and submit.kind == "SPAN_KIND_PRODUCER"
    assert submit.parent_span_id == ""
    assert submit.attributes["agent.type"] == "coder"
    spans = {
        name: [s for s in collector.named(name) if s.trace_id == submit.trace_id]
        for name in WORKER_SPANS
    }
    assert all(len(found) == 1 for found in spans.values()), spans
    task, wait, run, store = (spans[name][0] for name in WORKER_SPANS)
    assert {s.service for s in (task, wait, run, store)} == {"foundry-worker-coder"}
    assert task.parent_span_id == submit.span_id and task.kind == "SPAN_KIND_CONSUMER"
    assert task.attributes == {"task.id": "otlp-1", "agent.type": "coder", "task.attempt": 1}
    for child in (wait, run, store):
        assert child.parent_span_id == task.span_id, child
        assert child.attributes["task.id"] == "otlp-1"
    assert run.attributes["worker.id"].startswith("coder-") and run.attributes["task.attempt"] == 1
    assert store.attributes["task.status"] == "completed"
