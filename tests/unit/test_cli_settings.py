"""The foundry CLI builds its settings from the environment: a bad value exits 2 naming it."""

from __future__ import annotations

import pytest

from foundry import cli


@pytest.mark.parametrize("command", [["heal"], ["status"], ["submit", "coder", "hi"]])
def test_a_bad_gateway_url_exits_2_naming_the_variable(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a FOUNDRY_GATEWAY_URL that is not an http(s) URL
    monkeypatch.setenv("FOUNDRY_GATEWAY_URL", "ftp://127.0.0.1:8080")
    # When any command starts, Then it stops before doing anything, saying which variable
    assert cli.main(command) == 2
    assert "FOUNDRY_GATEWAY_URL" in capsys.readouterr().err
