"""URLs of servers: lists of them, and their safe-to-log form."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_SECRET_QUERY_KEYS = ("password", "pass", "token", "auth_token", "secret")
# Greedy to the last "@": a password holding "/" or "?" is still covered.
_USERINFO_RE = re.compile(r"^([a-z][a-z0-9+.-]*://)(.*)@", re.IGNORECASE)


def _redact_one(url: str) -> str:
    url = url.strip()
    match = _USERINFO_RE.match(url)
    if match:
        user, sep, _secret = match.group(2).partition(":")
        # user:password keeps the user; a lone name (nats://TOKEN@host) is a token
        shown = f"{user}:***" if sep else "***"
        url = f"{match.group(1)}{shown}@{url[match.end() :]}"
    base, qmark, query = url.partition("?")
    if not qmark:
        return url
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    items = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        secret = eq and key.lower() in _SECRET_QUERY_KEYS
        items.append(f"{key}=***" if secret else item)
    return f"{base}?{'&'.join(items)}{fragment}"


def redact_url(url: str) -> str:
    """The URL (or comma-separated URLs) with every password and token replaced by ``***``.

    Covers ``user:password@``, token-style userinfo (``nats://TOKEN@host``) and
    query-string secrets (``?password=``); never raises, whatever the text.
    """
    return ",".join(_redact_one(part) for part in url.split(","))


def split_urls(text: str) -> list[str]:
    """A comma-separated list of URLs as a list (blank items dropped)."""
    return [part.strip() for part in text.split(",") if part.strip()]


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379,host:26379/<master-name>[/<db>]"


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL: the Sentinels to ask, the master's name, the database.

    The userinfo is the master's (ACL user and password); ``rediss+sentinel`` speaks
    TLS to the Sentinels and the master alike.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def is_sentinel_url(text: str) -> bool:
    return text.strip().lower().startswith(tuple(f"{s}://" for s in SENTINEL_SCHEMES))


def host_port(item: str, default: int) -> tuple[str, int]:
    """``host:port``, ``host`` or ``[v6]:port`` as (host, port); ``ValueError`` if bad."""
    item = item.strip()
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
    if not host:
        raise ValueError(f"{item!r} names no host")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{item!r}: the port must be a number between 1 and 65535")
    return host, int(port_text)


def parse_sentinel_url(text: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` (never echoing a password) if bad."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"expected {SENTINEL_FORM}")
    userinfo, at, rest = rest.rpartition("@") if "@" in rest else ("", "", rest)
    hosts_text, _, path = rest.partition("/")
    path = path.split("?", 1)[0].strip("/")
    hosts = [h for h in hosts_text.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"no Sentinel listed; expected {SENTINEL_FORM}")
    sentinels = tuple(host_port(h, SENTINEL_PORT) for h in hosts)
    master, _, db_text = path.partition("/")
    if not master:
        raise ValueError(f"no master name after the Sentinels; expected {SENTINEL_FORM}")
    if db_text and not db_text.isdigit():
        raise ValueError(f"the database after the master name must be a number, not {db_text!r}")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return SentinelUrl(
        sentinels,
        unquote(master),
        int(db_text or 0),
        username,
        password,
        scheme.lower() == "rediss+sentinel",
    )
