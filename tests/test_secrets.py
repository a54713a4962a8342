"""Secret files, prepared embedded configs and the CLI's use of client.env (no servers)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry.embedded import client_env_path, cluster_env_path, nats_config_path, prepare
from foundry.natsauth import service_roles
from foundry.roles import role_env
from foundry.secrets import SecretStore, env_text, read_env_file, update_env_file, write_private
from foundry.settings import Settings
from tests.procs import ROOT


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_private_files_and_passwords_kept_across_runs(tmp_path: Path) -> None:
    # Given a store, When passwords are asked twice with a new name the second time
    store = SecretStore(tmp_path / "secrets")
    first = store.passwords("nats", ["healer", "client"])
    second = store.passwords("nats", ["healer", "client", "worker-coder"])
    # Then the old ones are kept, the new one added, all in a 0600 file in a 0700 folder
    assert second["healer"] == first["healer"] and second["client"] == first["client"]
    assert len(set(second.values())) == 3
    assert _mode(tmp_path / "secrets") == 0o700 and _mode(store.path) == 0o600
    # and rewriting a private file keeps it private
    path = write_private(tmp_path / "secrets" / "x", "one")
    os.chmod(path, 0o644)
    write_private(path, "two")
    assert _mode(path) == 0o600 and path.read_text() == "two"


def test_env_files_round_trip_and_take_new_keys(tmp_path: Path) -> None:
    entries = {"NATS_URL": "nats://client:p@ss w'rd@127.0.0.1:4222", "EMPTY": ""}
    path = write_private(tmp_path / "client.env", env_text(entries, "a header"))
    assert read_env_file(path) == entries
    # a shell reads the same values, and programs it starts see them (the nats CLI)
    out = subprocess.run(
        ["sh", "-c", f'. "{path}"; sh -c \'printf %s "$NATS_URL"\''],
        capture_output=True,
        text=True,
    )
    assert out.stdout == entries["NATS_URL"]
    # a later feature adds its key without knowing the others
    update_env_file(path, {"FOUNDRY_API_TOKEN": "tok"})
    assert read_env_file(path) == {**entries, "FOUNDRY_API_TOKEN": "tok"}
    assert path.read_text().startswith("# a header")


def test_prepare_writes_configs_and_gives_each_role_its_own(tmp_path: Path) -> None:
    # Given settings for a namespaced cluster with two agent types
    settings = Settings(
        data_dir=tmp_path / "data", namespace="blue", fleet={"coder": 1, "critic": 2},
        nats_url="nats://127.0.0.1:4333", redis_url="redis://127.0.0.1:6390/0",
    )  # fmt: skip
    # When it is prepared twice (a restart)
    prepared = prepare(settings, ["nats", "redis"])
    again = prepare(settings, ["nats", "redis"])
    # Then the healer's settings carry its credentials, the same both times
    assert prepared.nats_url == again.nats_url
    assert prepared.nats_url.startswith("nats://blue-healer:")
    assert prepared.redis_url.startswith("redis://foundry:")
    assert set(prepared.nats_role_passwords) == set(service_roles(["coder", "critic"]))
    assert prepared.nats_monitor_url == "http://127.0.0.1:8222"
    # and the nats config holds every role's user for this namespace's subjects
    config = json.loads(nats_config_path(settings).read_text())
    names = {u["user"] for u in config["authorization"]["users"]}
    assert {"blue-worker-coder", "blue-client", "blue-admin", "blue-healer"} <= names
    assert config["listen"] == "127.0.0.1:4333" and config["http"] == "127.0.0.1:8222"
    # and a worker is handed only its own password
    env = role_env(prepared, "worker-critic")
    assert env["FOUNDRY_NATS_ROLE_PASSWORDS"] == ""
    assert env["FOUNDRY_NATS_URL"].startswith("nats://blue-worker-critic:")
    assert prepared.nats_role_passwords["worker-critic"] in env["FOUNDRY_NATS_URL"]
    assert env["FOUNDRY_NATS_INBOX_PREFIX"] == "_INBOX_blue-worker-critic"
    # and a role without a password gets no credentials rather than the healer's
    assert "@" not in role_env(prepared, "")["FOUNDRY_NATS_URL"]
    # and client.env / cluster.env say what a person and another host need
    client = read_env_file(client_env_path(settings))
    assert client["NATS_URL"].startswith("nats://blue-client:")
    assert client["FOUNDRY_GATEWAY_URL"] == "http://127.0.0.1:8080"
    cluster = read_env_file(cluster_env_path(settings))
    assert cluster["FOUNDRY_NATS_URL"] == prepared.nats_url
    assert cluster["FOUNDRY_NAMESPACE"] == "blue"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        self.seen.append(dict(self.headers))
        body = json.dumps({"message": "nothing to heal"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_cli_reads_client_env_and_sends_the_bearer_token(
    tmp_path: Path, recorder: http.server.HTTPServer
) -> None:
    # Given a client.env naming a gateway and an API token
    data = tmp_path / "data"
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    path = client_env_path(Settings(data_dir=data))
    write_private(path, env_text({"FOUNDRY_GATEWAY_URL": url, "FOUNDRY_API_TOKEN": "tok-1"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env["FOUNDRY_DATA_DIR"] = str(data)

    def heal(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "foundry.cli", "heal"], env={**env, **extra}, cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    # When the CLI runs with nothing else set, Then it finds the gateway and sends the token
    out = heal()
    assert out.returncode == 0, out.stderr
    assert _Recorder.seen[-1]["Authorization"] == "Bearer tok-1"
    # and the explicit environment wins over the file
    assert heal(FOUNDRY_API_TOKEN="tok-2").returncode == 0
    assert _Recorder.seen[-1]["Authorization"] == "Bearer tok-2"
