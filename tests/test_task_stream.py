"""Streamed task output: a worker's ctx.emit() reaches an SSE client live, tagged with its
attempt, ends with the final status, and is kept for a late client; llm and exec emit."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.contracts import MessageRejected, OutputStream, TaskOutput
from foundry.natsauth import worker_role
from foundry.settings import LlmSettings, Settings
from tests.conftest import Gateway, eventually
from tests.fakes import FakeLLM, llm_app, make_ctx, serve
from tests.procs import ROOT, ProcessGroup, child_env
from tests.sandboxing import require_bwrap
from tests.sse import SMALL_STREAMS, open_stream
from tests.test_bus_auth import Conn, connect_as  # noqa: F401 - the fixture
from workers.builtin.exec import exec_handler
from workers.builtin.llm import llm_handler

SUBMIT = "/api/cluster/task/submit"
HANDLERS = {"coder": "tests.streaming_handlers:chatter", "architect": "echo"}


@pytest.fixture
def stream_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**SMALL_STREAMS, fleet={"coder": 1, "architect": 1}, handlers=HANDLERS)


@pytest.fixture
async def live(
    stream_settings: Settings, make_gateway: Any, procs: ProcessGroup, redis_url: str
) -> AsyncIterator[tuple[Gateway, Settings]]:
    gw: Gateway = await make_gateway(stream_settings)
    procs.worker(stream_settings, "coder")
    yield gw, stream_settings


async def submit(gw: Gateway, task_id: str, task_input: dict[str, Any]) -> None:
    body = {"agent_type": "coder", "description": "talk", "input": task_input, "task_id": task_id}
    async with gw.http.post(gw.url(SUBMIT), json=body) as resp:
        assert resp.status == 202, await resp.text()


def lines(frames: list[Any]) -> list[tuple[int, int, str]]:
    return [(f.data["attempt"], f.data["seq"], f.data["data"]) for f in frames]


async def test_output_streams_live_per_attempt_then_ends_and_is_kept(
    live: tuple[Gateway, Settings],
) -> None:
    gw, _ = live
    # Given a task whose first attempt emits three lines and asks for a retry
    await submit(gw, "talk-1", {"chunks": 3, "delay": 0.1, "fail_first": True, "stderr": "warn"})
    # When a client follows its stream from the start
    reader = await open_stream(gw.http, gw.url("/api/cluster/task/talk-1/stream"))
    await asyncio.wait_for(reader.ended.wait(), 30)
    # Then it saw both attempts' output in order, each chunk tagged, then the end
    expected = [
        *((1, n, f"attempt 1 line {n}\n") for n in range(3)),
        (1, 3, "warn"),
        *((2, n, f"attempt 2 line {n}\n") for n in range(3)),
        (2, 3, "warn"),
    ]
    assert lines(reader.of("output")) == expected
    assert [f.id for f in reader.of("output")][:2] == ["1:0", "1:1"]
    assert reader.of("output")[3].data["stream"] == "stderr"
    (end,) = reader.of("end")
    assert end.data["status"] == "completed" and end.data["attempts"] == 2
    assert end.data["result"] == {"chunks": 3, "attempt": 2}
    assert reader.got[-1].event == "end"
    # When a client comes after the task finished, it gets the kept output and the end
    late = await open_stream(gw.http, gw.url("/api/cluster/task/talk-1/stream"))
    await asyncio.wait_for(late.ended.wait(), 10)
    assert lines(late.of("output")) == expected and late.of("end")[0].data["status"] == "completed"
    # and one resuming after chunk 2:0 gets only what follows
    resumed = await open_stream(gw.http, gw.url("/api/cluster/task/talk-1/stream"), last_id="2:0")
    await asyncio.wait_for(resumed.ended.wait(), 10)
    assert lines(resumed.of("output")) == expected[5:]
    # and a caller that does not ask for a stream gets the record with the output as JSON
    async with gw.http.get(gw.url("/api/cluster/task/talk-1/stream")) as resp:
        body = await resp.json()
    assert body["status"] == "completed" and len(body["output"]) == len(expected)
    for r in (reader, late, resumed):
        await r.close()


async def test_a_client_joining_mid_task_gets_earlier_chunks_then_live_ones(
    live: tuple[Gateway, Settings],
) -> None:
    gw, _ = live
    # Given a task emitting 20 lines over about two seconds
    await submit(gw, "talk-2", {"chunks": 20, "delay": 0.1})

    async def started() -> bool:
        async with gw.http.get(gw.url("/api/cluster/task/talk-2/stream")) as resp:
            return len((await resp.json())["output"]) >= 5

    await eventually(started, 20)
    # When a client joins half way
    reader = await open_stream(gw.http, gw.url("/api/cluster/task/talk-2/stream"))
    await asyncio.wait_for(reader.ended.wait(), 30)
    # Then it has every line once, in order, and the end
    assert [s for _, s, _ in lines(reader.of("output"))] == list(range(20))
    assert reader.of("end")[0].data["status"] == "completed"
    await reader.close()


async def test_bad_input_and_unknown_tasks(live: tuple[Gateway, Settings]) -> None:
    gw, _ = live
    async with gw.http.get(gw.url("/api/cluster/task/nope/stream")) as resp:
        assert resp.status == 404
    async with gw.http.get(gw.url("/api/cluster/task/Bad%20Id/stream")) as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "task_id"
    # a Last-Event-ID this stream never sent replays the output from the start
    await submit(gw, "talk-3", {"chunks": 2, "delay": 0.01})
    async with gw.http.get(gw.url("/api/cluster/task/talk-3?wait=20")) as resp:
        assert (await resp.json())["status"] == "completed"
    reader = await open_stream(gw.http, gw.url("/api/cluster/task/talk-3/stream"), last_id="two")
    await asyncio.wait_for(reader.ended.wait(), 10)
    assert [f.id for f in reader.of("output")] == ["1:0", "1:1"]
    await reader.close()


async def test_follow_prints_the_output_then_the_result(live: tuple[Gateway, Settings]) -> None:
    gw, settings = live
    # When `foundry submit --follow` runs a task that emits three lines
    env = child_env(
        settings,
        FOUNDRY_GATEWAY_URL=gw.url("").rstrip("/"),
        FOUNDRY_API_TOKEN=gw.http.headers["Authorization"].removeprefix("Bearer "),
    )
    args = [sys.executable, "-m", "foundry.cli", "submit", "coder", "talk", "--follow",
            "--input", '{"chunks": 3, "delay": 0.05}', "--timeout", "30"]  # fmt: skip
    out = await asyncio.to_thread(
        subprocess.run, args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # Then it printed the lines as they came, then the completed record, and exited 0
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("attempt 1 line 0\nattempt 1 line 1\nattempt 1 line 2\n")
    assert '"status": "completed"' in out.stdout


async def test_workers_publish_output_for_their_own_type_only(
    connect_as: Callable[[str], Any],  # noqa: F811 - the fixture imported above
    settings: Settings,
) -> None:
    names = settings.names
    coder: Conn = await connect_as(worker_role("coder"))
    gateway: Conn = await connect_as("gateway")
    got: list[bytes] = []

    async def seen(msg: Any) -> None:
        got.append(msg.data)

    await gateway.nc.subscribe(names.output("*", ">"), cb=seen)
    await gateway.nc.flush()
    await coder.nc.publish(names.output("coder", "t.1"), b"mine")
    await coder.nc.flush()
    await eventually(lambda: got == [b"mine"], 5)
    await coder.publish_refused(names.output("architect", "t.1"))
    assert got == [b"mine"]


def test_the_output_contract_refuses_what_does_not_fit() -> None:
    good = TaskOutput("t-1", "coder", 2, 0, OutputStream.STDOUT, "hi\n")
    assert TaskOutput.from_payload(good.to_payload(), "agents.output.coder.t-1") == good
    bad = [
        (dataclasses.replace(good, data="x" * 9000).to_payload(), None, "size"),
        (good.to_payload().replace(b'"stdout"', b'"video"'), None, "enum"),
        (good.to_payload().replace(b'"seq":0', b'"seq":-1'), None, "range"),
        (good.to_payload(), "agents.output.architect.t-1", "subject"),
        (b"[1]", None, "type"),
    ]
    for payload, subject, reason in bad:
        with pytest.raises(MessageRejected) as info:
            TaskOutput.from_payload(payload, subject)
        assert info.value.reason == reason


async def test_llm_emits_each_streamed_token() -> None:
    fake = FakeLLM()
    async with serve(llm_app(fake)) as url:
        settings = Settings(llm=LlmSettings(url=f"{url}/v1", model="m", backoff=0.01))
        ctx = make_ctx("coder", None, settings, "plan it")
        emitted: list[tuple[str | bytes, str]] = []

        async def collect(chunk: str | bytes, stream: str) -> None:
            emitted.append((chunk, stream))

        ctx._emit = collect
        out = await llm_handler(ctx)
    assert "".join(str(c) for c, _ in emitted) == out["content"] == fake.reply
    assert len(emitted) == len(fake.reply.split()) and {s for _, s in emitted} == {"text"}


@pytest.mark.usefixtures(require_bwrap.__name__)
async def test_exec_emits_stdout_and_stderr_lines_as_they_come() -> None:
    ctx = make_ctx("executor", {"code": (
        "import sys, time\nprint('one', flush=True)\ntime.sleep(0.3)\n"
        "print('oops', file=sys.stderr, flush=True)\nprint('two')"
    )})  # fmt: skip
    emitted: list[tuple[float, str, bytes]] = []

    async def collect(chunk: str | bytes, stream: str) -> None:
        emitted.append((asyncio.get_running_loop().time(), stream, bytes(chunk, "utf-8")
                        if isinstance(chunk, str) else chunk))  # fmt: skip

    ctx._emit = collect
    out = await exec_handler(ctx)
    assert [(s, c) for _, s, c in emitted] == [
        ("stdout", b"one\n"), ("stderr", b"oops\n"), ("stdout", b"two\n"),
    ]  # fmt: skip
    assert emitted[1][0] - emitted[0][0] > 0.2  # the first line came before the program ended
    assert out["stdout"] == "one\ntwo\n"


async def test_emitted_output_over_the_cap_is_dropped(
    make_settings: Callable[..., Settings], make_gateway: Any, procs: ProcessGroup, nc: NATS
) -> None:
    settings = make_settings(
        **SMALL_STREAMS,
        fleet={"coder": 1},
        handlers={"coder": HANDLERS["coder"]},
        output_max_bytes=60,
    )
    gw: Gateway = await make_gateway(settings)
    procs.worker(settings, "coder")
    await submit(gw, "talk-cap", {"chunks": 10, "delay": 0.01})
    async with gw.http.get(gw.url("/api/cluster/task/talk-cap?wait=20")) as resp:
        assert (await resp.json())["status"] == "completed"
    async with gw.http.get(gw.url("/api/cluster/task/talk-cap/stream")) as resp:
        output = (await resp.json())["output"]
    # 60 bytes hold three 19-byte lines, not four
    assert [c["data"] for c in output] == [f"attempt 1 line {n}\n" for n in range(3)]
