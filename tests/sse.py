"""A Server-Sent Events reader over aiohttp, for tests of the gateway's streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse, ClientSession

STREAM = {"Accept": "text/event-stream"}
# For tests that make namespaces of their own: small stream limits, since JetStream reserves
# each stream's max_bytes against the suite's nats-server storage whether used or not.
SMALL_STREAMS = {
    "tasks_max_bytes": 64 * 1024**2,
    "events_max_bytes": 64 * 1024**2,
    "dead_max_bytes": 64 * 1024**2,
}


@dataclass
class Frame:
    event: str
    data: Any
    id: str | None
    comment: str | None = None


async def frames(resp: ClientResponse) -> AsyncIterator[Frame]:
    """Frames (and comments, as frames with ``comment`` set) until the stream ends."""
    event, data, ident = "message", "", None
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            yield Frame("", None, None, comment=line[1:].strip())
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and data:
            yield Frame(event, json.loads(data), ident)
            event, data, ident = "message", "", None


class Reader:
    """An open stream whose frames (not comments) are collected by a background task."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.got: list[Frame] = []
        self.comments: list[str] = []
        self.ended = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in frames(self.resp):
                if frame.comment is not None:
                    self.comments.append(frame.comment)
                else:
                    self.got.append(frame)
        except Exception:
            pass
        finally:
            self.ended.set()

    def of(self, event: str) -> list[Frame]:
        return [f for f in self.got if f.event == event]

    async def close(self) -> None:
        self._task.cancel()
        self.resp.close()


async def open_stream(
    http: ClientSession, url: str, last_id: str | None = None, **params: str
) -> Reader:
    headers = dict(STREAM)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    resp = await http.get(url, params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    return Reader(resp)
