"""For the workflow tests: an LLM that answers each role from a script, and cluster helpers.

:class:`ScriptedLLM` tells the roles apart by their system prompt and the
workflows by a marker word in the request, answers each (marker, role) from its
list of replies (the last one repeats), can hold a reply back, and counts every
call, so a test can say "the architect ran once".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import ClientSession, web

from foundry.settings import LlmSettings, WebhookSettings
from tests.fakes import FakeLLM, WebhookReceiver, serve, webhook_app

ROLES = ("architect", "coder", "critic")
APPROVE = '{"verdict": "approve", "reasons": []}'
PLAN = "Plan: one function, print the greeting."


def code_reply(marker: str, round_hint: str = "") -> str:
    return f"Here:\n```python\nprint('hello {marker}{round_hint}')\n```\nRun it with python3."


def revise(reason: str) -> str:
    return json.dumps({"verdict": "revise", "reasons": [reason]})


@dataclass
class ScriptedLLM:
    """Replies per (marker, role); ``hold`` delays a (marker, role) reply by seconds."""

    scripts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    hold: dict[tuple[str, str], float] = field(default_factory=dict)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    prompts: list[tuple[str, str, str]] = field(default_factory=list)  # marker, role, user text
    arrived: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def event(self, marker: str, role: str) -> asyncio.Event:
        return self.arrived.setdefault((marker, role), asyncio.Event())

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages", [])
        system = str(messages[0].get("content", "")) if messages else ""
        user = " ".join(str(m.get("content", "")) for m in messages[1:])
        role = next((r for r in ROLES if f"the {r} agent" in system), "unknown")
        marker = next((m for m, r in self.scripts if m in user), "unknown")
        key = (marker, role)
        self.calls[key] += 1
        self.prompts.append((marker, role, user))
        self.event(marker, role).set()
        replies = self.scripts.get(key, ["(no script)"])
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if self.hold.get(key):
            await asyncio.sleep(self.hold[key])
        fake = FakeLLM(reply=reply)
        return await fake.chat(request)  # aiohttp keeps the body it read

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    def script(self, marker: str, *critic: str, coder: str | None = None) -> None:
        """The usual replies for one workflow: a plan, code, then the critic's verdicts."""
        self.scripts[(marker, "architect")] = [PLAN]
        self.scripts[(marker, "coder")] = [coder or code_reply(marker)]
        self.scripts[(marker, "critic")] = list(critic)


class Api(Protocol):
    """A gateway to talk to: an in-process one (RunningApp) or one a healer runs."""

    http: ClientSession

    def url(self, path: str) -> str: ...


class Remote:
    """A gateway on a known port (run by a healer), with an admin session."""

    def __init__(self, base: str, http: ClientSession) -> None:
        self.base, self.http = base, http

    def url(self, path: str) -> str:
        return self.base + path


@dataclass
class Fakes:
    """The scripted model and the webhook receiver a test's fleet talks to."""

    llm: ScriptedLLM
    receiver: WebhookReceiver
    llm_url: str
    hook_url: str


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    """Both fakes, serving before the test's settings are made (so ``nc``, which tears
    down the namespace of ``settings``, cleans up this test's streams)."""
    llm, receiver = ScriptedLLM(), WebhookReceiver()
    async with serve(llm.app()) as llm_url, serve(webhook_app(receiver)) as hook_url:
        yield Fakes(llm, receiver, llm_url, hook_url)


def llm_settings(llm_url: str, hook_url: str) -> dict[str, Any]:
    """Settings for a fleet running the real built-in handlers against the local fakes."""
    return {
        "handlers": {},
        "llm": LlmSettings(url=f"{llm_url}/v1", model="test-model"),
        "webhook": WebhookSettings(url=f"{hook_url}/deploy"),
        "lease_ttl": 1,
    }


async def start_workflow(gw: Api, **body: Any) -> dict[str, Any]:
    async with gw.http.post(gw.url("/api/cluster/workflows"), json=body) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == 202, out
        return out


async def workflow(gw: Api, workflow_id: str, wait: float = 0) -> dict[str, Any]:
    url = gw.url(f"/api/cluster/workflows/{workflow_id}?wait={wait:g}")
    async with gw.http.get(url) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == 200, out
        return out


async def settled(gw: Api, workflow_id: str, timeout: float = 90) -> dict[str, Any]:
    """The workflow once finished or waiting for approval (long-polls, retrying 503s)."""
    deadline = time.monotonic() + timeout
    out: Any = None
    while True:
        try:
            url = gw.url(f"/api/cluster/workflows/{workflow_id}?wait=20")
            async with gw.http.get(url) as r:
                out = await r.json()
            if r.status == 200 and out["status"] != "running":
                return dict(out)
            assert r.status in (200, 503), out
        except aiohttp.ClientConnectionError as exc:  # a gateway being relaunched
            out = repr(exc)
        assert time.monotonic() < deadline, f"workflow {workflow_id} still {out}"
        await asyncio.sleep(0.2)


def steps_of(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{s['step']}.{s['round']}": s for s in state["steps"]}


async def post(http: ClientSession, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()
