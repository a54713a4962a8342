"""The status page at ``/``: static HTML, JavaScript and CSS shipped in ``gateway/static``.

The page holds no data, so it is served without a token; everything it shows
comes from API calls that send the token in ``Authorization``. It is served
with a strict Content-Security-Policy (``default-src 'self'``, no inline script
or style, no frames, no forms posting elsewhere), ``nosniff`` and
``Referrer-Policy: no-referrer``; nothing is fetched from anywhere else.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
ASSETS = {
    "/": ("index.html", "text/html"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/hosts.js": ("hosts.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}
PAGE_PATHS = frozenset(ASSETS)


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def asset(request: web.Request) -> web.Response:
    """GET /, /static/app.js, /static/hosts.js, /static/style.css"""
    name, media_type = ASSETS[request.path]
    return web.Response(body=_read(name), content_type=media_type, charset="utf-8", headers=HEADERS)
