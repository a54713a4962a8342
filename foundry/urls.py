"""URLs of servers: lists of them, and their safe-to-log form."""

from __future__ import annotations

import re

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
