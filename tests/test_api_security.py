"""The API's defences against a live gateway on real NATS and Redis: tokens and scopes,
cross-site requests, reserved ids, the non-loopback refusal, audit events and healer errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.settings import Settings
from gateway.page import PAGE_PATHS
from gateway.routes import ROUTES
from tests.conftest import ApiTokens, Gateway, eventually
from tests.procs import ROOT, child_env

SUBMIT = "/api/cluster/task/submit"
TASK = {"agent_type": "coder", "description": "d"}
SAMPLE = {"task_id": "some-task", "worker_id": "coder-0", "workflow_id": "wf-1"}


@pytest.fixture
async def anon() -> AsyncIterator[ClientSession]:
    """An HTTP session with no default token."""
    async with ClientSession() as session:
        yield session


def concrete(path: str) -> str:
    for name, value in SAMPLE.items():
        path = path.replace("{" + name + "}", value)
    return path


async def call(
    http: ClientSession, gw: Gateway, method: str, path: str, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, gw.url(path), **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, body, resp.headers


async def queued(nc: NATS, settings: Settings) -> int:
    info = await nc.jetstream().stream_info(settings.names.tasks_stream)
    return int(info.state.messages)


async def test_every_route_but_health_needs_a_token(gateway: Gateway, anon: ClientSession) -> None:
    # Given no Authorization header, every declared route answers 401 with a Bearer challenge
    # naming the scope it needs; /health alone answers, and says up or down, nothing more
    for route in ROUTES:
        status, body, headers = await call(anon, gateway, route.method, concrete(route.path))
        if route.scope is None:
            assert status == 200, route.path
            if route.path in PAGE_PATHS:  # the status page: static, no data in it
                continue
            assert body == {"status": "healthy"}, (route.path, body)
            continue
        assert status == 401, (route.method, route.path, status)
        assert headers["WWW-Authenticate"].startswith("Bearer"), route.path
        assert body["error"] == "unauthorized" and body["scope"] == route.scope
        assert route.scope in body["message"]
    # and unknown routes too: nothing answers anonymously but what is declared public
    status, _, _ = await call(anon, gateway, "GET", "/no/such/route")
    assert status == 401
    # an invalid token or a malformed header is 401 as well, saying which
    bad = {"Authorization": "Bearer fdy_not-a-token"}
    status, body, headers = await call(anon, gateway, "GET", "/api/cluster/status", headers=bad)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    basic = {"Authorization": "Basic dXNlcjpwdw=="}
    status, body, _ = await call(anon, gateway, "GET", "/api/cluster/status", headers=basic)
    assert status == 401 and "Bearer <token>" in body["message"]


async def test_scopes_are_enforced(
    gateway: Gateway, anon: ClientSession, api_tokens: ApiTokens, nc: NATS, settings: Settings
) -> None:
    h = api_tokens.header
    executor_only = h(api_tokens.make("ci", "submit:executor"))
    reader = h(api_tokens.make("viewer", "read"))
    scraper = h(api_tokens.make("prom", "metrics"))
    # A submit:executor token may submit executor tasks, not coder ones, and read nothing
    ok = {"agent_type": "executor", "description": "run", "task_id": "ex-1"}
    status, _, _ = await call(anon, gateway, "POST", SUBMIT, json=ok, headers=executor_only)
    assert status == 202
    coder = {**TASK, "task_id": "co-1"}
    status, body, _ = await call(anon, gateway, "POST", SUBMIT, json=coder, headers=executor_only)
    assert status == 403 and body["scope"] == "submit:coder" and body["token"] == "ci"
    assert "submit:coder" in body["message"]
    status, body, _ = await call(anon, gateway, "GET", "/api/cluster/status", headers=executor_only)
    assert status == 403 and body["scope"] == "read"
    # and nothing was queued for the refused one
    assert await queued(nc, settings) == 1
    status, _, _ = await call(anon, gateway, "GET", "/api/cluster/task/co-1", headers=reader)
    assert status == 404
    # A read token reads (tasks, status, metrics, the document) but may not operate or submit
    for path in ("/api/cluster/task/ex-1", "/api/cluster/status", "/metrics", "/api/openapi.json"):
        status, _, _ = await call(anon, gateway, "GET", path, headers=reader)
        assert status == 200, path
    status, body, _ = await call(anon, gateway, "POST", "/api/cluster/heal", headers=reader)
    assert status == 403 and body["scope"] == "operate"
    status, body, _ = await call(anon, gateway, "POST", SUBMIT, json=TASK, headers=reader)
    assert status == 403 and body["scope"] == "submit"
    # A metrics token scrapes /metrics and nothing else
    status, _, _ = await call(anon, gateway, "GET", "/metrics", headers=scraper)
    assert status == 200
    status, body, _ = await call(anon, gateway, "GET", "/api/cluster/task/ex-1", headers=scraper)
    assert status == 403 and body["scope"] == "read"
    # A reader also learns what /health keeps from strangers
    status, body, _ = await call(anon, gateway, "GET", "/health", headers=reader)
    assert status == 200 and body["nats"] == "connected" and "infrastructure_agent" in body


async def test_a_token_added_to_the_file_is_taken_without_a_restart(
    gateway: Gateway, anon: ClientSession, api_tokens: ApiTokens
) -> None:
    late = api_tokens.header(api_tokens.make("late", "read"))

    async def accepted() -> bool:
        status, _, _ = await call(anon, gateway, "GET", "/api/cluster/status", headers=late)
        return status == 200

    await eventually(accepted, 5, interval=0.2)


async def test_without_a_token_file_everything_but_health_is_refused(
    make_settings: Callable[..., Settings], make_gateway: Any, anon: ClientSession
) -> None:
    # Given a gateway started with FOUNDRY_API_TOKENS empty (auth on, the default)
    gw = await make_gateway(make_settings(api_tokens=""))
    # Then it is closed, saying tokens are not configured, even to a would-be admin
    status, body, headers = await call(gw.http, gw, "GET", "/api/cluster/status")
    assert status == 401 and "not configured" in body["message"]
    assert "FOUNDRY_API_TOKENS" in body["message"] and "Bearer" in headers["WWW-Authenticate"]
    status, _, _ = await call(anon, gw, "POST", SUBMIT, json=TASK)
    assert status == 401
    status, body, _ = await call(anon, gw, "GET", "/health")
    assert status == 200 and body == {"status": "healthy"}


async def test_auth_off_is_explicit_and_still_refuses_cross_site_requests(
    make_settings: Callable[..., Settings],
    make_gateway: Any,
    anon: ClientSession,
    nc: NATS,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given FOUNDRY_API_AUTH=off on loopback: it warns at start and answers without a token
    settings = make_settings(api_tokens="", api_auth=False)
    gw = await make_gateway(settings)
    assert any("FOUNDRY_API_AUTH=off" in r.getMessage() for r in caplog.records)
    status, _, _ = await call(anon, gw, "POST", SUBMIT, json={**TASK, "task_id": "off-1"})
    assert status == 202
    # When a page POSTs what a form can send (text/plain, no Origin header), a JSON text
    status, body, _ = await call(anon, gw, "POST", SUBMIT, data=codec.dumps(
        {**TASK, "task_id": "csrf-1"}), headers={"Content-Type": "text/plain"})  # fmt: skip
    # Then it is 415 saying the body must be JSON, and nothing is queued
    assert status == 415 and "application/json" in body["message"]
    # and the query-parameter form needs a token, which a cross-site form cannot send
    query = {"agent_type": "coder", "description": "x", "task_id": "csrf-2"}
    status, body, _ = await call(anon, gw, "POST", SUBMIT, params=query)
    assert status == 400 and "bearer token" in body["message"]
    # and a foreign Origin is refused whatever it sends
    evil = {"Origin": "http://evil.example"}
    status, body, _ = await call(anon, gw, "POST", SUBMIT, json=TASK, headers=evil)
    assert status == 403 and body["error"] == "foreign_origin"
    status, _, _ = await call(anon, gw, "POST", "/api/cluster/heal", headers=evil)
    assert status == 403
    assert await queued(nc, settings) == 1
    for task_id in ("csrf-1", "csrf-2"):
        status, _, _ = await call(anon, gw, "GET", f"/api/cluster/task/{task_id}")
        assert status == 404


async def test_origin_host_and_content_type_checks(
    make_settings: Callable[..., Settings],
    make_gateway: Any,
    anon: ClientSession,
    api_tokens: ApiTokens,
    nc: NATS,
) -> None:
    # Given a gateway that lets one other site call it (CORS) and knows one more host name
    trusted = "https://app.example.com"
    settings = make_settings(
        gateway_allowed_origins=(trusted,), gateway_allowed_hosts=("foundry.internal",)
    )
    gw = await make_gateway(settings)
    token = api_tokens.header(api_tokens.admin)
    port = gw.server.port
    # A cross-origin POST from the trusted origin with text/plain and a JSON body: 415,
    # nothing queued
    status, body, _ = await call(anon, gw, "POST", SUBMIT, data=codec.dumps(TASK),
        headers={**token, "Origin": trusted, "Content-Type": "text/plain"})  # fmt: skip
    assert status == 415 and body["field"] == "Content-Type"
    assert await queued(nc, settings) == 0
    # A foreign Origin is 403 even with a valid token; so is Origin: null
    for origin in ("http://evil.example", "null", f"http://evil.example:{port}"):
        status, body, headers = await call(
            anon, gw, "GET", "/api/cluster/status", headers={**token, "Origin": origin}
        )
        assert status == 403 and body["error"] == "foreign_origin", origin
        assert "Access-Control-Allow-Origin" not in headers
    # The gateway's own origin (a page it served) is fine, with no CORS headers
    own = {**token, "Origin": f"http://127.0.0.1:{port}"}
    status, _, headers = await call(anon, gw, "GET", "/api/cluster/status", headers=own)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # The trusted origin gets CORS headers, and its preflight is answered
    status, _, headers = await call(
        anon, gw, "GET", "/api/cluster/status", headers={**token, "Origin": trusted}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == trusted
    pre = {"Origin": trusted, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    status, _, headers = await call(anon, gw, "OPTIONS", SUBMIT, headers=pre)
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    # A foreign Host (DNS rebinding: evil.example resolving to 127.0.0.1) is 421
    for host in ("evil.example", f"evil.example:{port}", f"localhost:{port + 1}"):
        status, body, _ = await call(
            anon, gw, "POST", SUBMIT, json=TASK, headers={**token, "Host": host}
        )
        assert status == 421 and body["error"] == "misdirected_request", host
    assert await queued(nc, settings) == 0
    # while the loopback names and the listed host are answered; /health answers any Host
    for host in (f"localhost:{port}", f"[::1]:{port}", f"foundry.internal:{port}"):
        status, _, _ = await call(
            anon, gw, "GET", "/api/cluster/status", headers={**token, "Host": host}
        )
        assert status == 200, host
    status, _, _ = await call(anon, gw, "GET", "/health", headers={"Host": "evil.example"})
    assert status == 200


async def test_seq_ids_are_reserved_and_query_form_is_exclusive(
    gateway: Gateway, nc: NATS, settings: Settings
) -> None:
    status, body, _ = await call(
        gateway.http, gateway, "POST", SUBMIT, json={**TASK, "task_id": "seq-17"}
    )
    assert status == 400 and body["field"] == "task_id" and "reserved" in body["message"]
    status, body, _ = await call(
        gateway.http, gateway, "POST", SUBMIT, json=TASK, params={"task_id": "q-1"}
    )
    assert status == 400 and "not both" in body["message"]
    assert await queued(nc, settings) == 0
    # reading a seq- id is fine: those are the ids of tasks published without one
    status, _, _ = await call(gateway.http, gateway, "GET", "/api/cluster/task/seq-17")
    assert status == 404


async def test_405_carries_allow(gateway: Gateway) -> None:
    status, body, headers = await call(gateway.http, gateway, "DELETE", "/api/cluster/heal")
    assert status == 405 and headers["Allow"] == "POST" and "POST" in body["message"]


def _gateway_exit(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=child_env(settings, **env), cwd=ROOT, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "env",
    [
        {"FOUNDRY_GATEWAY_HOST": "0.0.0.0", "FOUNDRY_API_TOKENS": ""},
        {"FOUNDRY_GATEWAY_HOST": "::", "FOUNDRY_API_AUTH": "off"},
    ],
)
def test_non_loopback_bind_without_tokens_exits_2(
    make_settings: Callable[..., Settings], env: dict[str, str]
) -> None:
    # Given a gateway told to listen beyond loopback with no tokens (or auth off)
    # Then it refuses to start, naming both variables
    out = _gateway_exit(make_settings(), **env)
    assert out.returncode == 2, out.stderr
    assert "FOUNDRY_GATEWAY_HOST" in out.stderr and "FOUNDRY_API_TOKENS" in out.stderr


def test_unreadable_or_bad_token_file_exits_2(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    out = _gateway_exit(make_settings(), FOUNDRY_API_TOKENS=str(tmp_path / "missing"))
    assert out.returncode == 2 and "FOUNDRY_API_TOKENS" in out.stderr
    bad = tmp_path / "bad"
    bad.write_text('{"name": "x"}\n')
    out = _gateway_exit(make_settings(), FOUNDRY_API_TOKENS=str(bad))
    assert out.returncode == 2 and "line 1" in out.stderr


async def test_operator_actions_are_audit_events_naming_the_token(
    gateway: Gateway, anon: ClientSession, api_tokens: ApiTokens, nc: NATS, settings: Settings
) -> None:
    # Given a listener on the heal events and an operate token, and no healer running
    seen: list[dict[str, Any]] = []

    async def on_event(msg: Msg) -> None:
        seen.append(codec.loads(msg.data))

    sub = await nc.subscribe(settings.names.heal_event("audit"), cb=on_event)
    ops = api_tokens.header(api_tokens.make("night-shift", "operate"))
    # When the operator releases a slot
    path = "/api/cluster/workers/coder-0/release"
    status, _, _ = await call(anon, gateway, "POST", path, headers=ops)
    assert status == 503  # no healer answered
    # Then an audit event names the token, the action, the slot and the outcome
    await eventually(lambda: seen, 5)
    event = seen[0]
    assert event["kind"] == "heal.audit" and event["action"] == "release"
    assert event["token"] == "night-shift" and event["worker_id"] == "coder-0"
    assert event["status"] == 503 and event["outcome"] == "failed" and event["error"]
    await sub.unsubscribe()


async def test_healer_error_replies_reach_the_caller(
    gateway: Gateway, nc: NATS, settings: Settings
) -> None:
    # Given a healer stand-in on the real bus answering with the healer's error shapes
    replies = {
        "heal": {"error": "RuntimeError: supervisor is stopping", "code": "internal"},
        "release": {
            "error": "bad request: request body must be a JSON object",
            "code": "bad_request",
        },
    }

    def responder(verb: str) -> Callable[[Msg], Any]:
        async def answer(msg: Msg) -> None:
            await nc.publish(msg.reply, codec.dumps(replies[verb]))

        return answer

    subs = [await nc.subscribe(settings.names.control(v), cb=responder(v)) for v in replies]
    await nc.flush()
    try:
        # Then heal is a 502 carrying the healer's reason, not a 200
        status, body, _ = await call(gateway.http, gateway, "POST", "/api/cluster/heal")
        assert status == 502 and body["error"] == "healer_error"
        assert "supervisor is stopping" in body["message"]
        # and a refused release is a 400 with the reason, not a 409 with state None
        path = "/api/cluster/workers/coder-0/release"
        status, body, _ = await call(gateway.http, gateway, "POST", path)
        assert status == 400 and "must be a JSON object" in body["message"]
        replies["release"] = {"error": "no slot 'coder-0'", "code": "not_found"}
        status, body, _ = await call(gateway.http, gateway, "POST", path)
        assert status == 404 and body["worker_id"] == "coder-0"
        assert "no slot" in body["message"]
    finally:
        for sub in subs:
            await sub.unsubscribe()
