"""Bearer tokens with scopes: who is calling, and may they call this route.

Each route declares the scope it needs (``gateway.routes``). The middleware
reads ``Authorization: Bearer <token>``, looks the token up in the file named by
``FOUNDRY_API_TOKENS`` (``foundry.apitokens``; re-read when it changes) and
answers 401 (``WWW-Authenticate: Bearer``) without a valid token, 403 when the
token lacks the scope. Public routes (``/health``) take no token but note a
valid one, so they can say more to a caller allowed to read.

Without a token file the gateway is closed, not open: every request but
``/health`` gets 401 saying tokens are not configured, unless the operator sets
``FOUNDRY_API_AUTH=off`` (loopback only; a warning at every start).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from foundry.apitokens import ADMIN, SUBMIT, VAR, ApiToken, TokenTable, load_tokens
from foundry.errors import ConfigError
from foundry.settings import Settings
from gateway.errors import ApiError
from gateway.spec import Handler

log = logging.getLogger(__name__)

RELOAD_EVERY = 1.0  # seconds between checks of the token file's mtime
DENIAL_LOG_EVERY = 60.0
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# The caller when FOUNDRY_API_AUTH=off: allowed everything, but it presented no token.
AUTH_OFF = ApiToken("auth-off", frozenset({ADMIN}), "")
CALLER = web.RequestKey("caller", ApiToken)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Tokens:
    """The configured tokens, re-read when the file changes (checked at most once a second)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.table = TokenTable()
        self._mtime = 0.0
        self._checked = 0.0
        if path:
            self.table = load_tokens(path)
            self._mtime = os.stat(path).st_mtime

    def current(self) -> TokenTable:
        now = time.monotonic()
        if self.path and now - self._checked >= RELOAD_EVERY:
            self._checked = now
            self._reload()
        return self.table

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            self.table = load_tokens(self.path)
            self._mtime = mtime
            log.info("api tokens reloaded: %s", ", ".join(self.table.names()) or "none")
        except (OSError, ConfigError) as exc:
            log.error("api tokens not reloaded, keeping the previous ones: %s", exc)


@dataclass(frozen=True)
class AuthPolicy:
    """What the middleware enforces, decided once at start-up from the settings."""

    enabled: bool
    tokens: Tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        """Load the tokens; refuse a non-loopback bind without them (ConfigError)."""
        tokens = Tokens(settings.api_tokens)
        exposed = not is_loopback(settings.gateway_host)
        if exposed and (not settings.api_auth or not len(tokens.table)):
            why = "FOUNDRY_API_AUTH=off" if not settings.api_auth else f"no tokens in {VAR}"
            raise ConfigError(
                f"FOUNDRY_GATEWAY_HOST={settings.gateway_host!r} is not a loopback address and "
                f"{why}: set {VAR} to a token file (python -m foundry.apitokens create FILE "
                "admin admin) or bind 127.0.0.1"
            )
        if not settings.api_auth:
            log.warning(
                "FOUNDRY_API_AUTH=off: the API answers every request without a token; "
                "anyone who can reach %s:%s can submit tasks and heal",
                settings.gateway_host,
                settings.gateway_port,
            )
        elif not len(tokens.table):
            log.warning(
                "no API tokens configured (%s is %s): every request but /health is refused",
                VAR,
                "empty" if not settings.api_tokens else f"{settings.api_tokens!r} with no entry",
            )
        return cls(settings.api_auth, tokens)


def _challenge(error: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="foundry"' + (f', error="{error}"' if error else "")
    return {"WWW-Authenticate": value}


def unauthorized(scope: str | None, why: str, error: str | None = None) -> ApiError:
    need = f"a bearer token with scope {scope}" if scope else "a bearer token"
    return ApiError(
        401,
        "unauthorized",
        f"{why}; this route needs {need} (Authorization: Bearer <token>)",
        scope=scope,
    ).with_headers(_challenge(error))


def forbidden(token: ApiToken, scope: str) -> ApiError:
    return ApiError(
        403,
        "forbidden",
        f"token {token.name!r} lacks scope {scope} (it has {', '.join(sorted(token.scopes))})",
        scope=scope,
        token=token.name,
    ).with_headers(_challenge("insufficient_scope"))


def may(token: ApiToken, scope: str) -> bool:
    """Whether ``token`` passes a route that needs ``scope``; ``submit`` takes any submit scope."""
    if token.allows(scope):
        return True
    return scope == SUBMIT and any(s.startswith(SUBMIT + ":") for s in token.scopes)


def caller(request: web.Request) -> ApiToken | None:
    return request.get(CALLER)


def require(request: web.Request, scope: str) -> ApiToken:
    """The caller, if allowed ``scope`` (a handler's finer check, e.g. ``submit:coder``)."""
    token = caller(request)
    if token is None:
        raise unauthorized(scope, "no token")
    if not token.allows(scope):
        raise forbidden(token, scope)
    return token


def presented_token(request: web.Request) -> bool:
    """Whether the caller proved itself with a token (not merely FOUNDRY_API_AUTH=off)."""
    token = caller(request)
    return token is not None and token is not AUTH_OFF


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        raise unauthorized(
            None, "the Authorization header is not 'Bearer <token>'", "invalid_request"
        )
    return value.strip()


def auth_middleware(policy: AuthPolicy, scopes: dict[tuple[str, str], str | None]) -> Middleware:
    """Check the caller against ``scopes``: (method, path pattern) → scope, None for public."""

    public_paths = frozenset(path for (_, path), scope in scopes.items() if scope is None)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource is not None else "")
        # Unknown routes and methods need a valid token (any scope) before their 404/405:
        # nothing answers anonymously but what is declared public (and a public path's
        # 405, which tells only what the document says anyway).
        scope = scopes.get(key)
        public = (key in scopes and scope is None) or request.path in public_paths
        if not policy.enabled:
            request[CALLER] = AUTH_OFF
            return await handler(request)
        presented = _bearer(request) if not public else _quiet_bearer(request)
        table = policy.tokens.current()
        token = table.authenticate(presented) if presented else None
        if token is not None:
            request[CALLER] = token
        if public:
            return await handler(request)
        if not len(table):
            raise unauthorized(
                scope,
                f"API tokens are not configured on this gateway ({VAR} names no token)",
            )
        if presented is None:
            raise unauthorized(scope, "no token")
        if token is None:
            raise unauthorized(scope, "the token is not valid", "invalid_token")
        if scope is not None and not may(token, scope):
            _log_denial(token.name, request.method, key[1], scope)
            raise forbidden(token, scope)
        return await handler(request)

    return authenticate


_last_denial: dict[tuple[str, str], float] = {}


def _log_denial(name: str, method: str, path: str, scope: str) -> None:
    """Log a refused scope at most once a minute per (token, scope): a client may retry."""
    now = time.monotonic()
    if now - _last_denial.get((name, scope), -DENIAL_LOG_EVERY) < DENIAL_LOG_EVERY:
        return
    if len(_last_denial) > 1024:
        _last_denial.clear()
    _last_denial[(name, scope)] = now
    log.warning("denied %s %s to token %r: needs scope %s", method, path, name, scope)


def _quiet_bearer(request: web.Request) -> str | None:
    try:
        return _bearer(request)
    except ApiError:
        return None
