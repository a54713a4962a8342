"""Cross-site defences: Host and Origin allow-lists, JSON-only bodies, CORS only when asked.

- ``Host`` must name this gateway (421 otherwise), which defeats DNS rebinding:
  the loopback names and ``FOUNDRY_GATEWAY_HOST`` on the gateway's port, plus
  ``FOUNDRY_GATEWAY_ALLOWED_HOSTS`` (``name`` for any port, ``name:port``, ``*``
  for any host, e.g. behind a proxy that checks it).
- ``Origin``, when a browser sends one, must be this gateway's own (same host
  and port as ``Host``) or one of ``FOUNDRY_GATEWAY_ALLOWED_ORIGINS`` (403
  otherwise; ``null`` is refused).
- A request body must be ``application/json`` (415): a cross-site form cannot
  send that type without a CORS preflight.
- CORS headers (and preflight answers) only for the configured origins.

``/health`` is exempt from the Host and Origin checks (it says up or down and
nothing more), so probes that address the gateway by any name keep working.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from foundry.settings import Settings
from gateway.errors import ApiError
from gateway.spec import Handler

EXEMPT = frozenset({"/health"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
DEFAULT_NAMES = ("127.0.0.1", "localhost", "::1")
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PREFLIGHT_MAX_AGE = "600"


def _split(authority: str) -> tuple[str, int | None] | None:
    """``name[:port]`` (``[v6]:port``) → (lowercase name without brackets, port)."""
    try:
        parts = urlsplit("//" + authority.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path:
        return None
    return name, port


class Origins:
    """The allow-lists, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.any_host = "*" in settings.gateway_allowed_hosts
        names = set(DEFAULT_NAMES)
        if settings.gateway_host.strip().lower() not in WILDCARD_BINDS:
            names.add(settings.gateway_host.strip().lower().strip("[]"))
        self.own_names = frozenset(names)
        self.own_port = settings.gateway_port
        listed = [_split(h) for h in settings.gateway_allowed_hosts if h != "*"]
        self.listed = frozenset(h for h in listed if h is not None)
        self.cors = frozenset(settings.gateway_allowed_origins)

    def host_ok(self, host: str | None, local_port: int | None) -> bool:
        if self.any_host:
            return True
        split = _split(host) if host else None
        if split is None:
            return False
        name, port = split
        port = 80 if port is None else port
        if name in self.own_names and port in (self.own_port, local_port):
            return True
        return (name, None) in self.listed or (name, port) in self.listed

    def origin_ok(self, origin: str, host: str | None) -> bool:
        if origin.lower().rstrip("/") in self.cors:
            return True
        parts = urlsplit(origin.lower())
        split = _split(host) if host else None
        if parts.scheme not in ("http", "https") or not parts.hostname or split is None:
            return False
        default = 443 if parts.scheme == "https" else 80
        try:
            origin_port = parts.port or default
        except ValueError:
            return False
        return (parts.hostname, origin_port) == (split[0], split[1] or default)


def _local_port(request: web.Request) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "WWW-Authenticate, Allow",
        "Vary": "Origin",
    }


def _preflight(request: web.Request, origin: str) -> web.Response:
    allowed = getattr(request.match_info.http_exception, "allowed_methods", None) or {"GET"}
    return web.Response(
        status=204,
        headers={
            **_cors_headers(origin),
            "Access-Control-Allow-Methods": ", ".join(sorted(allowed)),
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        },
    )


def origin_guard(origins: Origins) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in EXEMPT:
            return await handler(request)
        host = request.headers.get("Host")
        if not origins.host_ok(host, _local_port(request)):
            raise ApiError(
                421,
                "misdirected_request",
                f"Host {host!r} does not name this gateway; list it in "
                "FOUNDRY_GATEWAY_ALLOWED_HOSTS if it should",
                field="Host",
            )
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not origins.origin_ok(origin, host):
            raise ApiError(
                403,
                "foreign_origin",
                f"requests from pages at {origin[:100]!r} are refused; list the origin in "
                "FOUNDRY_GATEWAY_ALLOWED_ORIGINS if it should call this API",
                field="Origin",
            )
        cors = origin.lower().rstrip("/") in origins.cors
        if (
            cors
            and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
        ):
            return _preflight(request, origin)
        if not cors:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_cors_headers(origin))
            raise
        response.headers.update(_cors_headers(origin))
        return response

    return guard


@web.middleware
async def json_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a body that is not application/json (an empty one may carry any type)."""
    if request.method not in BODYLESS_METHODS and request.body_exists:
        if request.content_type != "application/json":
            given = request.headers.get("Content-Type", "none")
            raise ApiError(
                415,
                "unsupported_media_type",
                f"request bodies must be JSON sent as Content-Type: application/json, "
                f"not {given[:80]!r}",
                field="Content-Type",
            )
    return await handler(request)
