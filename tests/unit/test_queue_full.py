"""A full task queue: JetStream's error code is named, and the gateway answers it with 429."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from foundry.errors import FoundryError, QueueFull
from gateway.errors import ApiError, json_errors


def test_queue_full_is_a_foundry_error_naming_the_setting() -> None:
    exc = QueueFull("coder")
    assert isinstance(exc, FoundryError) and exc.agent_type == "coder"
    assert "coder" in str(exc) and "FOUNDRY_MAX_QUEUE_PER_TYPE" in str(exc)


async def test_the_gateway_answers_a_full_queue_with_429() -> None:
    async def publish(_request: web.Request) -> web.StreamResponse:
        raise QueueFull("coder")

    request = make_mocked_request("POST", "/api/cluster/task/submit")
    with pytest.raises(ApiError) as caught:
        await json_errors(request, publish)
    assert caught.value.status_code == 429
    assert caught.value.text is not None
    body = json.loads(caught.value.text)
    assert body["error"] == "queue_full" and body["agent_type"] == "coder"
    assert "FOUNDRY_MAX_QUEUE_PER_TYPE" in body["message"]
