"""Traces: one trace from the gateway's submit through a worker's spans (queue wait, handler
run, result store), a traceparent set by a plain NATS publisher continued, LLM call spans,
and tracing off by default without importing the SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from foundry import tracing
from foundry.connect import connect_nats
from foundry.contracts import MSG_ID_HEADER
from foundry.settings import LlmSettings, Settings
from tests.conftest import Gateway, eventually
from tests.fakes import FakeLLM, llm_app, make_ctx, serve
from tests.procs import ROOT, ProcessGroup, child_env
from tests.sse import SMALL_STREAMS
from workers.builtin.llm import llm_handler

WORKER_SPANS = {"task", "queue wait", "handler run", "result store"}


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """This process traces into memory for the test (the gateway's spans)."""
    exporter = InMemorySpanExporter()
    previous = tracing.install(tracing.build("gateway", exporter))
    try:
        yield exporter
    finally:
        tracing.install(previous).shutdown()


def worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def traced(make_settings: Callable[..., Settings], tmp_path: Path) -> tuple[Settings, Path]:
    spans = tmp_path / "worker-spans.jsonl"
    settings = make_settings(**SMALL_STREAMS,
        fleet={"coder": 1}, handlers={"coder": "echo"}, tracing=True, otel_exporter="file",
        otel_file=str(spans),
    )  # fmt: skip
    return settings, spans


async def wait_done(gw: Gateway, task_id: str) -> None:
    async with gw.http.get(gw.url(f"/api/cluster/task/{task_id}?wait=20")) as resp:
        assert (await resp.json())["status"] == "completed"


async def test_one_trace_from_the_gateway_through_the_worker(
    traced: tuple[Settings, Path],
    make_gateway: Any,
    procs: ProcessGroup,
    memory: InMemorySpanExporter,
) -> None:
    settings, path = traced
    # Given a gateway tracing in this process and a worker tracing to a file
    gw: Gateway = await make_gateway(settings)
    procs.worker(settings, "coder")
    # When a task is submitted through the gateway and completes
    body = {"agent_type": "coder", "description": "trace me", "task_id": "tr-1"}
    async with gw.http.post(gw.url("/api/cluster/task/submit"), json=body) as resp:
        assert resp.status == 202
    await wait_done(gw, "tr-1")
    # Then the gateway's submit span and the worker's spans are one trace
    (submit,) = [s for s in memory.get_finished_spans() if s.name == "submit"]
    assert submit.attributes is not None and submit.attributes["task.id"] == "tr-1"
    trace_id = f"{submit.context.trace_id:032x}"
    await eventually(lambda: WORKER_SPANS <= {s["name"] for s in worker_spans(path)}, 10)
    spans = {s["name"]: s for s in worker_spans(path) if s["trace_id"] == trace_id}
    assert set(spans) == WORKER_SPANS, worker_spans(path)
    assert spans["task"]["parent_span_id"] == f"{submit.context.span_id:016x}"
    for name in ("queue wait", "handler run", "result store"):
        assert spans[name]["parent_span_id"] == spans["task"]["span_id"], name
    assert spans["task"]["service"] == "foundry-worker-coder"
    assert spans["queue wait"]["start"] <= spans["handler run"]["start"]
    assert spans["handler run"]["end"] <= spans["result store"]["end"]
    assert spans["handler run"]["attributes"]["worker.id"]


async def test_a_traceparent_from_a_plain_nats_publisher_is_continued(
    traced: tuple[Settings, Path], make_gateway: Any, procs: ProcessGroup, nc: NATS
) -> None:
    settings, path = traced
    gw: Gateway = await make_gateway(settings)
    procs.worker(settings, "coder")
    # When a task is published as `nats pub --header traceparent:…` would
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", MSG_ID_HEADER: "np-1"}
    conn = await connect_nats(settings, "publisher")
    try:
        await conn.jetstream().publish(
            settings.names.tasks("coder"), b"plain text", headers=headers
        )
    finally:
        await conn.close()
    await wait_done(gw, "np-1")
    # Then the worker's spans belong to that trace, under that parent
    await eventually(lambda: any(s["trace_id"] == trace_id for s in worker_spans(path)), 10)
    await asyncio.sleep(0.3)
    spans = {s["name"]: s for s in worker_spans(path) if s["trace_id"] == trace_id}
    assert set(spans) == WORKER_SPANS
    assert spans["task"]["parent_span_id"] == parent


async def test_each_llm_call_is_a_span_with_model_and_tokens(
    memory: InMemorySpanExporter,
) -> None:
    fake = FakeLLM(script=["503"])
    async with serve(llm_app(fake)) as url:
        settings = Settings(llm=LlmSettings(url=f"{url}/v1", model="m", backoff=0.01))
        with tracing.current().span("handler run"):
            out = await llm_handler(make_ctx("coder", None, settings, "plan it"))
    calls = [s for s in memory.get_finished_spans() if s.name == "llm call"]
    assert len(calls) == 2  # the 503, then the answer
    (run,) = [s for s in memory.get_finished_spans() if s.name == "handler run"]
    assert all(c.parent is not None and c.parent.span_id == run.context.span_id for c in calls)
    attrs = calls[1].attributes or {}
    assert attrs["llm.model"] == "m" and attrs["llm.attempt"] == 2
    assert attrs["llm.completion_tokens"] == out["usage"]["completion_tokens"] > 0
    assert calls[0].status.status_code.name == "ERROR"


def test_tracing_is_off_by_default_and_never_imports_the_sdk() -> None:
    code = (
        "import sys\n"
        "from foundry import tracing\nfrom foundry.settings import Settings\n"
        "import gateway.app, workers.taskrun, workers.builtin.llm\n"
        "t = tracing.setup(Settings(), 'worker')\n"
        "with t.span('x') as s: s.set('k', 1)\n"
        "print(t.enabled, any(m.startswith('opentelemetry.sdk.trace') for m in sys.modules))\n"
    )
    # (redis-py imports the OpenTelemetry metrics modules when they are installed, for its
    # own opt-in metrics; the tracing SDK is what tracing=0 must never load)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_an_exporter_that_cannot_work_stops_the_worker_with_exit_2(
    make_settings: Callable[..., Settings],
) -> None:
    # Given a worker where the OTLP exporter cannot be imported (a None entry in
    # sys.modules makes its import fail, as when the otlp extra is not installed)
    settings = make_settings(**SMALL_STREAMS, tracing=True, otel_exporter="otlp")
    code = (
        "import runpy, sys\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None\n"
        "sys.argv = ['workers', '--type', 'coder']\n"
        "runpy.run_module('workers', run_name='__main__', alter_sys=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Then it stops with exit 2 saying what to install
    assert out.returncode == 2, out.stderr
    assert "FOUNDRY_OTEL_EXPORTER=otlp" in out.stderr and "agent-foundry[otlp]" in out.stderr
