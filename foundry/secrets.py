"""Secret files: a private folder, generated passwords, and ``KEY=value`` env files.

Everything here is written mode 0600 inside a 0700 folder, atomically (a
reader never sees half a file, and no moment exists where the file is
readable by others). Passwords are generated once and kept: a restart reuses
them, and a new role (a new agent type in the fleet) only adds one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

from foundry.errors import ConfigError

PASSWORDS_FILE = "passwords.json"
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def new_secret() -> str:
    """A random password: 32 URL-safe characters (no quoting needed anywhere)."""
    return secrets.token_urlsafe(24)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, replacing any earlier file atomically."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


class SecretStore:
    """Generated passwords by kind (``nats``, ``redis``) and name, in one private JSON file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / PASSWORDS_FILE

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"FOUNDRY_DATA_DIR: {self.path} is unreadable ({exc.__class__.__name__}); "
                "remove it to generate new passwords"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"FOUNDRY_DATA_DIR: {self.path} is not a JSON object")
        return {
            str(kind): {str(k): str(v) for k, v in names.items()}
            for kind, names in data.items()
            if isinstance(names, dict)
        }

    def passwords(self, kind: str, names: Iterable[str]) -> dict[str, str]:
        """The password of each name, generating (and saving) those not yet there."""
        data = self._load()
        known = data.setdefault(kind, {})
        wanted = list(names)
        missing = [name for name in wanted if name not in known]
        for name in missing:
            known[name] = new_secret()
        if missing or not self.path.exists():
            write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return {name: known[name] for name in wanted}


def env_text(entries: Mapping[str, str], header: str = "") -> str:
    """``export KEY='value'`` lines a POSIX shell can source (values quoted as needed):
    exported, so the programs started from that shell (the ``nats`` CLI) see them."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, value in entries.items():
        if not _ENV_KEY_RE.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a file written by :func:`env_text` (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            continue
        try:
            parts = shlex.split(value)
        except ValueError:
            continue
        out[key] = parts[0] if parts else ""
    return out


def update_env_file(path: Path, entries: Mapping[str, str]) -> Path:
    """Set (or add) ``entries`` in the env file at ``path``, keeping its other keys.

    This is how later features add their keys (an API token, say) to
    ``client.env`` without knowing what else it holds.
    """
    current = read_env_file(path) if path.exists() else {}
    header = ""
    if path.exists():
        header = "\n".join(
            line[2:] if line.startswith("# ") else line[1:]
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")
        )
    current.update(entries)
    return write_private(path, env_text(current, header))
