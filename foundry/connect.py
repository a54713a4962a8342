"""NATS and Redis connections with robust reconnect settings and bounded start-up retries.

A service started before its broker or cache comes up waits for it (logged,
bounded by ``FOUNDRY_CONNECT_TIMEOUT``) instead of crashing at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError
from foundry.roles import role_settings
from foundry.settings import Settings, redact_url, split_urls
from foundry.urls import is_sentinel_url, parse_sentinel_url

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _log_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _log_disconnect() -> None:
    log.warning("nats: disconnected, reconnecting")


async def _log_reconnect() -> None:
    log.info("nats: reconnected")


async def _with_retries(
    attempt: Callable[[], Awaitable[T]],
    budget: float,
    what: str,
    error: Callable[[Exception], Exception],
) -> T:
    """Call ``attempt`` until it succeeds, backing off up to 2 s, for at most ``budget`` s."""
    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise error(exc) from exc
            log.warning("%s not reachable yet (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


JWT_MARK = "BEGIN NATS USER JWT"
SEED_MARK = "BEGIN USER NKEY SEED"


def _seed_of(text: str) -> str | None:
    """The user nkey seed of a creds file (inside its SEED block, or the file alone)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if SEED_MARK in line and i + 1 < len(lines):
            return lines[i + 1]
    if len(lines) == 1 and lines[0].startswith("SU"):
        return lines[0]
    return None


def nats_auth_options(settings: Settings) -> dict[str, Any]:
    """nats-py options for FOUNDRY_NATS_CREDS and TLS (credentials in the URL need none)."""
    options: dict[str, Any] = {}
    if settings.nats_creds:
        path = Path(settings.nats_creds)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"FOUNDRY_NATS_CREDS: cannot read {path}: {exc.strerror}") from None
        if JWT_MARK in text:
            options["user_credentials"] = str(path)  # decentralised auth: JWT + seed
        else:
            seed = _seed_of(text)
            if seed is None:
                raise ConfigError(
                    f"FOUNDRY_NATS_CREDS: {path} holds neither a user JWT nor a user nkey seed"
                )
            options["nkeys_seed_str"] = seed  # a user nkey listed in the server's config
    wants_tls = any(url.startswith("tls://") for url in split_urls(settings.nats_url))
    if wants_tls or settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca or None)
        if settings.nats_tls_cert:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key or None)
        options["tls"] = context
    return options


def nats_servers(urls: str) -> dict[str, Any]:
    """nats-py's ``servers`` and, when every listed URL carries the same credentials, those
    credentials as ``user``/``password`` (or ``token``) options.

    A cluster's servers advertise the others' addresses without credentials, and
    nats-py reconnects to those too: credentials given as options go to every server,
    discovered or listed, where URL userinfo would go only to the URL that holds it.
    """
    servers = split_urls(urls)
    infos = {urlsplit(u).netloc.rpartition("@")[0] for u in servers}
    if len(infos) != 1 or not next(iter(infos)):
        return {"servers": servers}
    parts = [urlsplit(u) for u in servers]
    user, password = parts[0].username, parts[0].password
    bare = [urlunsplit(p._replace(netloc=p.netloc.rpartition("@")[2])) for p in parts]
    if password is None:
        return {"servers": bare, "token": unquote(user or "")}
    return {"servers": bare, "user": unquote(user or ""), "password": unquote(password)}


def _auth_hint(exc: BaseException) -> str:
    text = str(exc).lower()
    if "authorization" in text or "authentication" in text:
        return (
            " The server refused the credentials: check the user:password in "
            "FOUNDRY_NATS_URL or FOUNDRY_NATS_CREDS."
        )
    return ""


async def connect_nats(settings: Settings, name: str, **extra: Any) -> NATS:
    """Connect to NATS, retrying for up to ``connect_timeout`` seconds.

    ``name`` is the service's role (``healer``, ``gateway``, ``worker-coder`` …): when
    FOUNDRY_NATS_ROLE_PASSWORDS holds that role (cluster.env sourced on another
    host), the connection uses that role's user.
    """
    if name in settings.nats_role_passwords:
        settings = role_settings(settings, name)
    options: dict[str, Any] = {
        **nats_servers(settings.nats_url),
        "name": name,
        "inbox_prefix": settings.nats_inbox_prefix,
        # Servers are tried in the order FOUNDRY_NATS_URL lists them: a host that lists its
        # own node first keeps its healer and workers on that node, so a partition between
        # nodes never cuts a worker's heartbeats off from its own healer.
        "dont_randomize": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": 2,
        "max_outstanding_pings": 2,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "error_cb": _log_error,
        "disconnected_cb": _log_disconnect,
        "reconnected_cb": _log_reconnect,
        "pending_size": 8 * 1024 * 1024,
        **nats_auth_options(settings),
    }
    options.update(extra)
    conn: NATS = await _with_retries(
        # With max_reconnect_attempts=-1, nats.connect() itself retries a refused first
        # connection forever: bound the attempt, or FOUNDRY_CONNECT_TIMEOUT never fires.
        lambda: asyncio.wait_for(nats.connect(**options), max(0.5, settings.connect_timeout)),
        settings.connect_timeout,
        "NATS",
        lambda exc: BrokerUnavailable(
            f"NATS at {redact_url(settings.nats_url)} did not answer within "
            f"{settings.connect_timeout:g}s ({exc!r}); is nats-server running? "
            f"Set FOUNDRY_NATS_URL to where it listens.{_auth_hint(exc)}"
        ),
    )
    return conn


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py options for a ``rediss://`` (or ``rediss+sentinel://``) URL: the CA and
    the client certificate."""
    if not settings.redis_url.startswith(("rediss://", "rediss+sentinel://")):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.redis_tls_ca:
        options["ssl_ca_certs"] = settings.redis_tls_ca
    if settings.redis_tls_cert:
        options["ssl_certfile"] = settings.redis_tls_cert
        options["ssl_keyfile"] = settings.redis_tls_key or None
    return options


class SentinelMaster(aioredis.Redis):
    """The master's client from :meth:`Sentinel.master_for`; closing it closes the
    connections to the Sentinels too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for client in self.sentinels.sentinels:
                await client.aclose()


def redis_client(settings: Settings) -> aioredis.Redis:
    """A Redis client that fails fast when the server is down (no long hangs).

    A ``redis+sentinel://`` URL gives a client of the master the Sentinels name
    (``Sentinel(...).master_for``): after a failover its next connection goes to the
    promoted replica.
    """
    common: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 3.0,
        "health_check_interval": 5,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        **redis_tls_options(settings),
    }
    if not is_sentinel_url(settings.redis_url):
        return aioredis.Redis.from_url(settings.redis_url, **common)
    target = parse_sentinel_url(settings.redis_url)
    tls = {"ssl": True, **redis_tls_options(settings)} if target.tls else {}
    sentinel_options: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
    sentinel_options.update(tls)
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=sentinel_options
    )
    master: SentinelMaster = sentinel.master_for(
        target.master,
        redis_class=SentinelMaster,
        db=target.db,
        username=target.username,
        password=target.password,
        **{**common, **tls},
    )
    master.sentinels = sentinel
    return master


async def connect_redis(settings: Settings) -> aioredis.Redis:
    """Create a client and wait (bounded) until the server answers PING."""
    client = redis_client(settings)

    async def ping() -> aioredis.Redis:
        await client.ping()
        return client

    try:
        return await _with_retries(
            ping,
            settings.connect_timeout,
            "Redis",
            lambda exc: CacheUnavailable(
                f"Redis at {redact_url(settings.redis_url)} did not answer within "
                f"{settings.connect_timeout:g}s ({exc!r}); is redis-server running? "
                "Set FOUNDRY_REDIS_URL to where it listens."
            ),
        )
    except CacheUnavailable:
        await client.aclose()
        raise
