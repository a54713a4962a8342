"""JSON responses encoded with orjson (the stdlib encoder costs more than the handler here)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from foundry import codec


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.dumps(body), status=status, content_type="application/json")
