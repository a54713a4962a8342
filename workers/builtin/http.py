"""Small HTTP helpers shared by the ``llm`` and ``webhook`` built-ins."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether there was more."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await resp.content.read(64 * 1024)
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data[:limit]), True


def where(url: str) -> str:
    """``scheme://host:port`` of ``url``: safe to log (paths and queries may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def snippet(data: bytes, limit: int = 300, scrub: str = "") -> str:
    """A short, printable excerpt of a response body, with ``scrub`` (a secret) removed."""
    text = data[:limit].decode("utf-8", "replace").strip()
    if scrub:
        text = text.replace(scrub, "***")
    return text + ("…" if len(data) > limit else "")


def redirect_error(resp: aiohttp.ClientResponse, server: str) -> str:
    """Why a 3xx answer is refused, naming where it pointed (without its query string)."""
    location = resp.headers.get("Location", "")
    parts = urlsplit(location)
    shown = (
        f"{where(location)}{parts.path}" if parts.scheme else (parts.path or "(no Location header)")
    )
    return (
        f"{server} answered HTTP {resp.status} redirecting to {shown}; redirects are not followed"
    )
