"""API tokens: the token file format, hashing, creation and loading.

The file named by ``FOUNDRY_API_TOKENS`` holds one JSON object per line (JSON
Lines); blank lines and lines starting with ``#`` are ignored::

    {"name": "admin", "scopes": ["admin"], "sha256": "9f86d0…", "created_at": 1767225600}
    {"name": "ci", "scopes": ["submit:executor", "read"], "sha256": "…"}

``name`` identifies the token in logs and audit events; ``scopes`` is a
non-empty list of :data:`SCOPES` entries (``submit:<agent type>`` limits
submissions to one type); ``sha256`` is the hex SHA-256 of the token itself.
The plaintext is never stored: :func:`create_token` returns it once. Other keys
(``created_at``) are kept for people and ignored.

A presented token is checked by hashing it and looking the digest up
(:meth:`TokenTable.authenticate`); the stored digest is then compared with
:func:`hmac.compare_digest`.

``python -m foundry.apitokens create FILE NAME SCOPE…`` appends a token and
prints it; ``init`` makes the tokens a compose deployment needs.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from foundry.errors import ConfigError
from foundry.names import AGENT_TYPE_RE

VAR = "FOUNDRY_API_TOKENS"
SUBMIT, READ, OPERATE, ADMIN, METRICS = "submit", "read", "operate", "admin", "metrics"
SCOPES = (SUBMIT, READ, OPERATE, ADMIN, METRICS)
SCOPE_HINT = (
    "scopes are submit, submit:<agent type>, read, operate, metrics, admin "
    "(admin allows everything; read also allows metrics)"
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
NAME_HINT = "1-64 characters: letters, digits, '_', '.', '@', '-' (starting with a letter or digit)"
TOKEN_PREFIX = "fdy_"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CACHE_MAX = 1024


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored in the file."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random token (256 bits, URL-safe)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def valid_scope(scope: str) -> bool:
    if scope in SCOPES:
        return True
    kind, sep, agent_type = scope.partition(":")
    return kind == SUBMIT and bool(sep) and AGENT_TYPE_RE.fullmatch(agent_type) is not None


@dataclass(frozen=True)
class ApiToken:
    """One configured token: who it is and what it may do (never the token itself)."""

    name: str
    scopes: frozenset[str]
    sha256: str

    def allows(self, required: str) -> bool:
        """Whether this token grants ``required`` (``submit:<type>``, ``read``, …)."""
        if ADMIN in self.scopes or required in self.scopes:
            return True
        if required.startswith(SUBMIT + ":"):
            return SUBMIT in self.scopes
        return required == METRICS and READ in self.scopes


class TokenTable:
    """Tokens by digest. ``authenticate`` costs one SHA-256 per new token, then a dict hit."""

    def __init__(self, tokens: Iterable[ApiToken] = ()) -> None:
        self.by_digest: dict[str, ApiToken] = {t.sha256: t for t in tokens}
        self._seen: dict[str, ApiToken] = {}

    def __len__(self) -> int:
        return len(self.by_digest)

    def names(self) -> list[str]:
        return sorted(t.name for t in self.by_digest.values())

    def authenticate(self, presented: str) -> ApiToken | None:
        cached = self._seen.get(presented)
        if cached is not None:
            return cached
        digest = hash_token(presented)
        token = self.by_digest.get(digest)
        if token is None or not hmac.compare_digest(token.sha256, digest):
            return None
        if len(self._seen) >= _CACHE_MAX:
            self._seen.clear()
        self._seen[presented] = token
        return token


def _entry(line: str, where: str) -> ApiToken:
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: not a JSON object")
    name, scopes, digest = body.get("name"), body.get("scopes"), body.get("sha256")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: 'name' must be {NAME_HINT}")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}: 'scopes' must be a non-empty list of strings")
    bad = [s for s in scopes if not valid_scope(s)]
    if bad:
        raise ConfigError(f"{where}: unknown scope {bad[0]!r}; {SCOPE_HINT}")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ConfigError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    return ApiToken(name, frozenset(scopes), digest)


def parse_tokens(text: str, source: str) -> list[ApiToken]:
    """Entries of a token file's text; ConfigError names the variable, file and line."""
    tokens: list[ApiToken] = []
    names: set[str] = set()
    digests: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{VAR}: {source} line {number}"
        token = _entry(line, where)
        if token.name in names:
            raise ConfigError(f"{where}: the name {token.name!r} is used twice")
        if token.sha256 in digests:
            raise ConfigError(f"{where}: the same token is listed twice")
        names.add(token.name)
        digests.add(token.sha256)
        tokens.append(token)
    return tokens


def load_tokens(path: str | os.PathLike[str]) -> TokenTable:
    """Read a token file; a missing, unreadable or malformed file is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{VAR}: cannot read {os.fspath(path)!r}: {exc}") from None
    return TokenTable(parse_tokens(text, repr(os.fspath(path))))


def create_token(path: str | os.PathLike[str], name: str, scopes: Sequence[str]) -> str:
    """Append a new token named ``name`` to the file (mode 0600) and return its plaintext."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"token name {name!r}: must be {NAME_HINT}")
    bad = [s for s in scopes if not valid_scope(s)]
    if not scopes or bad:
        raise ConfigError(f"token scopes {list(scopes)!r}: {SCOPE_HINT}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = generate_token()
    entry = {"name": name, "scopes": list(scopes), "sha256": hash_token(token),
             "created_at": int(time.time())}  # fmt: skip
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.fchmod(handle.fileno(), 0o600)
        handle.seek(0)
        text = handle.read()
        if any(t.name == name for t in parse_tokens(text, repr(os.fspath(target)))):
            raise ConfigError(f"{VAR}: {os.fspath(target)!r} already has a token named {name!r}")
        prefix = "\n" if text and not text.endswith("\n") else ""
        handle.write(prefix + json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token


def _write_secret(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(text + "\n")


def ensure_token(tokens: Path, name: str, scopes: Sequence[str], out: Path, mode: int) -> bool:
    """Create token ``name`` and write its plaintext to ``out`` unless both exist already."""
    existing = load_tokens(tokens).names() if tokens.exists() else []
    if name in existing and out.exists():
        return False
    if name in existing:
        raise ConfigError(
            f"{VAR}: {os.fspath(tokens)!r} has a token {name!r} but {os.fspath(out)!r} is "
            "missing; remove its line to make a new one"
        )
    _write_secret(out, create_token(tokens, name, scopes), mode)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m foundry.apitokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="append a token and print its plaintext")
    create.add_argument("file", type=Path)
    create.add_argument("name")
    create.add_argument("scopes", nargs="+")
    init = sub.add_parser("init", help="an admin and a metrics token, once (for compose)")
    init.add_argument("--tokens", type=Path, required=True, help="the token file")
    init.add_argument("--admin-out", type=Path, required=True, help="admin token (0600)")
    init.add_argument("--metrics-out", type=Path, required=True, help="scrape token (0644)")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            print(create_token(args.file, args.name, args.scopes))
            return 0
        made = ensure_token(args.tokens, "admin", [ADMIN], args.admin_out, 0o600)
        # Prometheus runs as another user: the scrape token (scope metrics) is world-readable
        # in its own volume; it can read /metrics and nothing else.
        made |= ensure_token(args.tokens, "prometheus", [METRICS], args.metrics_out, 0o644)
        print("api tokens: " + ("created" if made else "already present"))
        return 0
    except ConfigError as exc:
        print(f"apitokens: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
