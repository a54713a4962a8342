"""The ``webhook`` built-in against a local receiver: body, signature, timeout, failures."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from foundry.contracts import parse_task
from foundry.settings import Settings, WebhookSettings
from tests.fakes import WebhookReceiver, make_ctx, serve, webhook_app
from workers.builtin.webhook import MAX_BODY, SIGNATURE_HEADER, WebhookHandler, webhook_handler
from workers.handlers import TaskFailed

SECRET = "whsec-test-secret"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    rec = WebhookReceiver()
    async with serve(webhook_app(rec)) as url:
        yield rec, f"{url}/deploy"


async def deploy(settings: Settings, task_input: Any = None) -> dict[str, Any]:
    return await webhook_handler(make_ctx("deployer", task_input, settings, "ship v1.2"))


async def deploy_failing(settings: Settings) -> TaskFailed:
    with pytest.raises(TaskFailed) as info:
        await deploy(settings)
    return info.value


async def test_body_and_signature(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    settings = Settings(webhook=WebhookSettings(url=url, secret=SECRET))
    # When a deploy task runs
    out = await deploy(settings, {"version": "1.2", "env": "staging"})
    # Then the receiver got the task as JSON with a valid HMAC-SHA256 signature
    headers, body = rec.requests[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    sent = json.loads(body)
    assert sent["task_id"] == "t-1" and sent["agent_type"] == "deployer"
    assert sent["description"] == "ship v1.2"
    assert sent["input"] == {"version": "1.2", "env": "staging"}
    assert sent["attempt"] == 1 and sent["sent_at"] > 0
    assert sent["submitted_by"] is None
    assert headers["X-Foundry-Task-Id"] == "t-1"
    assert headers["Content-Type"] == "application/json"
    # and the result is its status and body
    assert out == {"status": 200, "body": '{"deployed": true}', "truncated": False}


async def test_no_secret_no_signature(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    await deploy(Settings(webhook=WebhookSettings(url=url)))
    headers, _ = rec.requests[0]
    assert SIGNATURE_HEADER not in headers


async def test_timeout_is_a_clear_failure(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    rec.delay = 5.0
    err = await deploy_failing(Settings(webhook=WebhookSettings(url=url, timeout=0.3)))
    assert "FOUNDRY_WEBHOOK_TIMEOUT" in str(err) and "0.3s" in str(err)


async def test_error_status_fails_with_status_and_body(
    receiver: tuple[WebhookReceiver, str],
) -> None:
    rec, url = receiver
    rec.status, rec.reply = 409, b'{"error": "deploy already running"}'
    err = await deploy_failing(Settings(webhook=WebhookSettings(url=url)))
    assert "HTTP 409" in str(err)
    assert err.result == {
        "status": 409,
        "body": '{"error": "deploy already running"}',
        "truncated": False,
    }


async def test_long_body_is_capped(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    rec.reply = b"x" * (MAX_BODY * 3)
    out = await deploy(Settings(webhook=WebhookSettings(url=url)))
    assert len(out["body"]) == MAX_BODY and out["truncated"] is True


async def test_not_configured_and_unreachable() -> None:
    err = await deploy_failing(Settings())
    assert "FOUNDRY_DEPLOY_WEBHOOK_URL" in str(err)
    # the URL's path (which may hold a token) is not echoed in errors
    err = await deploy_failing(
        Settings(webhook=WebhookSettings(url="http://127.0.0.1:1/hooks/s3cr3t"))
    )
    assert "cannot reach http://127.0.0.1:1" in str(err) and "s3cr3t" not in str(err)


async def test_body_names_the_submitter(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    ctx = make_ctx(
        "deployer", None, Settings(webhook=WebhookSettings(url=url)), "ship", submitted_by="ci-bot"
    )
    await webhook_handler(ctx)
    assert json.loads(rec.requests[0][1])["submitted_by"] == "ci-bot"


async def test_redirect_is_refused_naming_its_location(
    receiver: tuple[WebhookReceiver, str],
) -> None:
    rec, url = receiver
    # Given a receiver that answers with a redirect to another of its own routes
    rec.location = url.replace("/deploy", "/elsewhere") + "?sig=abc"
    err = await deploy_failing(Settings(webhook=WebhookSettings(url=url)))
    # Then the task fails naming where it pointed, and the redirect was not followed
    assert "HTTP 302" in str(err) and "/elsewhere" in str(err) and "sig=abc" not in str(err)
    assert err.result["status"] == 302
    assert len(rec.requests) == 1


async def test_one_session_per_worker(receiver: tuple[WebhookReceiver, str]) -> None:
    rec, url = receiver
    handler = WebhookHandler()
    settings = Settings(webhook=WebhookSettings(url=url))
    await handler.setup(settings)
    try:
        session = handler.session
        await handler(make_ctx("deployer", None, settings, "one"))
        await handler(make_ctx("deployer", None, settings, "two"))
        assert handler.session is session and len(rec.requests) == 2
    finally:
        await handler.close()
    assert handler.session is None


def test_submitted_by_is_read_from_the_payload_not_the_input() -> None:
    task = parse_task(b'{"description": "x", "submitted_by": "tok-ci"}', None, "deployer", 1, 1024)
    assert task.submitted_by == "tok-ci"
    forged = parse_task(b'{"input": {"submitted_by": "admin"}}', None, "deployer", 2, 1024)
    assert forged.submitted_by is None
    assert (
        parse_task(
            b'{"description": "x", "submitted_by": 7}', None, "deployer", 3, 1024
        ).submitted_by
        is None
    )
