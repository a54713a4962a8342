"""The token file: format, errors naming the line, creation with mode 0600, scope rules."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from foundry.apitokens import (
    ApiToken,
    TokenTable,
    create_token,
    ensure_token,
    hash_token,
    load_tokens,
    parse_tokens,
)
from foundry.errors import ConfigError
from tests.procs import ROOT


def test_create_appends_hashed_entries_with_mode_0600(tmp_path: Path) -> None:
    # Given a token file that does not exist yet, in a folder that does not either
    path = tmp_path / "secrets" / "api-tokens.jsonl"
    # When two tokens are created
    admin = create_token(path, "admin", ["admin"])
    ci = create_token(path, "ci", ["submit:executor", "read"])
    # Then the file is 0600, holds their digests and names but never the tokens
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert admin not in text and ci not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [e["name"] for e in lines] == ["admin", "ci"]
    assert lines[1]["scopes"] == ["submit:executor", "read"]
    assert lines[0]["sha256"] == hash_token(admin)
    # and loading it authenticates each token as its entry
    table = load_tokens(path)
    found = table.authenticate(ci)
    assert found is not None and found.name == "ci"
    assert table.authenticate(ci) is found  # served from the per-token cache
    assert table.authenticate(admin + "x") is None
    assert table.names() == ["admin", "ci"]


def test_create_refuses_a_taken_name_and_bad_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    create_token(path, "admin", ["admin"])
    with pytest.raises(ConfigError, match="already has a token named 'admin'"):
        create_token(path, "admin", ["read"])
    with pytest.raises(ConfigError, match="scopes"):
        create_token(path, "x", ["root"])
    with pytest.raises(ConfigError, match="scopes"):
        create_token(path, "x", [])
    with pytest.raises(ConfigError, match="name"):
        create_token(path, "bad name", ["read"])
    assert load_tokens(path).names() == ["admin"]


GOOD = '{"name": "a", "scopes": ["read"], "sha256": "' + "0" * 64 + '"}'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not a JSON object"),
        ("[1]", "not a JSON object"),
        ('{"scopes": ["read"], "sha256": "' + "0" * 64 + '"}', "'name'"),
        ('{"name": "b", "scopes": [], "sha256": "' + "1" * 64 + '"}', "non-empty list"),
        ('{"name": "b", "scopes": ["root"], "sha256": "' + "1" * 64 + '"}', "unknown scope"),
        ('{"name": "b", "scopes": ["submit:Bad.Type"], "sha256": "' + "1" * 64 + '"}', "scope"),
        ('{"name": "b", "scopes": ["read"], "sha256": "abc"}', "64 lowercase hex"),
        (GOOD.replace('"a"', '"a"'), "used twice"),
        (GOOD.replace('"a"', '"b"'), "same token is listed twice"),
    ],
)
def test_a_bad_line_is_a_config_error_naming_variable_file_and_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# tokens\n{GOOD}\n\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_tokens(path)
    message = str(err.value)
    assert message.startswith("FOUNDRY_API_TOKENS: ") and str(path) in message
    assert "line 4" in message and reason in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FOUNDRY_API_TOKENS: cannot read"):
        load_tokens(tmp_path / "nope")


@pytest.mark.parametrize(
    ("scopes", "required", "allowed"),
    [
        ({"admin"}, "operate", True),
        ({"admin"}, "submit:coder", True),
        ({"submit"}, "submit:coder", True),
        ({"submit:executor"}, "submit:executor", True),
        ({"submit:executor"}, "submit:coder", False),
        ({"submit:executor"}, "read", False),
        ({"read"}, "metrics", True),
        ({"metrics"}, "read", False),
        ({"read"}, "operate", False),
        ({"operate"}, "read", False),
    ],
)
def test_scope_rules(scopes: set[str], required: str, allowed: bool) -> None:
    assert ApiToken("t", frozenset(scopes), "0" * 64).allows(required) is allowed


def test_table_ignores_comments_and_blank_lines() -> None:
    tokens = parse_tokens(f"\n# a comment\n{GOOD}\n   \n", "inline")
    assert len(TokenTable(tokens)) == 1


def test_cli_create_and_init_are_idempotent(tmp_path: Path) -> None:
    # Given the module's command line
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foundry.apitokens", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    tokens = tmp_path / "s" / "api-tokens.jsonl"
    # When create prints a token, it is the one the file authenticates
    out = run("create", str(tokens), "ops", "operate")
    assert out.returncode == 0, out.stderr
    found = load_tokens(tokens).authenticate(out.stdout.strip())
    assert found is not None and found.scopes == {"operate"}
    # When init runs twice, the admin and metrics tokens are made once
    args = ["init", "--tokens", str(tokens), "--admin-out", str(tmp_path / "a"),
            "--metrics-out", str(tmp_path / "m")]  # fmt: skip
    assert run(*args).returncode == 0
    admin = (tmp_path / "a").read_text().strip()
    assert run(*args).stdout.strip() == "api tokens: already present"
    assert (tmp_path / "a").read_text().strip() == admin
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    table = load_tokens(tokens)
    assert table.names() == ["admin", "ops", "prometheus"]
    metrics = table.authenticate((tmp_path / "m").read_text().strip())
    assert metrics is not None and metrics.scopes == {"metrics"}
    # and a bad scope exits 2 saying why
    bad = run("create", str(tokens), "x", "root")
    assert bad.returncode == 2 and "scopes" in bad.stderr


def test_ensure_token_refuses_an_entry_whose_plaintext_is_lost(tmp_path: Path) -> None:
    tokens = tmp_path / "t"
    assert ensure_token(tokens, "admin", ["admin"], tmp_path / "a", 0o600)
    (tmp_path / "a").unlink()
    with pytest.raises(ConfigError, match="remove its line"):
        ensure_token(tokens, "admin", ["admin"], tmp_path / "a", 0o600)
