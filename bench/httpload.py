"""A lean HTTP/1.1 keep-alive client for load generation.

On a 2-core machine the load generator competes with the gateway for CPU, so
it should cost as little as possible: one asyncio stream per connection, a
request written as one buffer, and only the status line and Content-Length
read from the response. Good enough for the gateway's JSON answers; not a
general client (no chunked bodies, no redirects, no TLS).
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """The server answered something this client does not read."""


class Connection:
    def __init__(self, host: str, port: int, token: str = "") -> None:
        self.host = host
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request, read one response; reconnects once if the server closed."""
        for attempt in (0, 1):
            if self.writer is None:
                await self.open()
            try:
                return await self._exchange(method, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
            elif key == b"transfer-encoding":
                raise HttpError("chunked responses are not supported by this client")
        content = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, content
