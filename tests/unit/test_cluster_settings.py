"""Clustering settings and generators: Sentinel URLs, stream replicas, the cluster block,
credentials for discovered servers, cluster.env, and the compose cluster profile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from foundry.childenv import env_for
from foundry.connect import nats_servers
from foundry.embedded import cluster_env, nats_cluster
from foundry.errors import ConfigError
from foundry.names import Names
from foundry.natsauth import ClusterConfig, TlsFiles, server_config, users
from foundry.provision import auto_replicas, cluster_size, stream_configs
from foundry.servers import find_nats_server
from foundry.settings import Settings
from foundry.urls import parse_sentinel_url, redact_url

ROOT = Path(__file__).resolve().parents[2]
SENTINELS = "redis+sentinel://foundry:pw%2F1@10.0.0.1:26379,10.0.0.2,[::1]:26380/main/3"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    target = parse_sentinel_url(SENTINELS)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (target.master, target.db, target.username, target.password) == (
        "main", 3, "foundry", "pw/1",
    )  # fmt: skip
    assert not target.tls and parse_sentinel_url(SENTINELS.replace("redis+", "rediss+")).tls
    assert "pw" not in repr(target) and "pw%2F1" not in redact_url(SENTINELS)
    assert Settings.from_env({"FOUNDRY_REDIS_URL": SENTINELS}).redis_url == SENTINELS


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379", "no master name"),
        ("redis+sentinel:///main", "no Sentinel listed"),
        ("redis+sentinel://h1:x/main", "the port must be a number"),
        ("redis+sentinel://h1/main/zero", "must be a number"),
        ("redis+sentinel://u:secret@h1:0/main", "the port must be a number"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_variable(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"FOUNDRY_REDIS_URL.*{says}") as caught:
        Settings.from_env({"FOUNDRY_REDIS_URL": url})
    assert "secret" not in str(caught.value)


def test_cluster_settings_are_checked_and_round_trip() -> None:
    env = {
        "FOUNDRY_STREAM_REPLICAS": "3",
        "FOUNDRY_REDIS_MIN_REPLICAS": "1",
        "FOUNDRY_NATS_CLUSTER_LISTEN": "10.0.0.1",
        "FOUNDRY_NATS_CLUSTER_ROUTES": "10.0.0.1:6222,nats-route://10.0.0.2:6222",
    }
    settings = Settings.from_env(env)
    assert settings.nats_cluster_listen == "10.0.0.1:6222"
    assert settings.nats_cluster_routes == (
        "nats-route://10.0.0.1:6222", "nats-route://10.0.0.2:6222",
    )  # fmt: skip
    assert Settings.from_env(settings.to_env()) == settings
    for var, bad in (
        ("FOUNDRY_STREAM_REPLICAS", "7"),
        ("FOUNDRY_REDIS_MIN_REPLICAS", "-1"),
        ("FOUNDRY_NATS_CLUSTER_LISTEN", "h:port"),
        ("FOUNDRY_NATS_SERVER_NAME", "a b"),
        ("FOUNDRY_NATS_CLUSTER_ROUTES", "http://h:1"),
    ):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: bad})


def test_unset_replicas_are_three_on_a_cluster_of_three_or_more_else_one() -> None:
    urls = ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]
    alone = {"host": "10.0.0.1", "port": 4222, "connect_urls": urls[:1]}
    two = {**alone, "cluster": "c", "connect_urls": urls[:2]}
    three = {**two, "connect_urls": urls}
    assert [cluster_size(i) for i in (alone, two, three)] == [1, 2, 3]
    assert [auto_replicas(i) for i in (alone, two, three)] == [1, 1, 3]
    assert {c.num_replicas for c in stream_configs(Settings(), 3)} == {3}


def test_the_cluster_block_routes_with_a_password_over_verified_tls(tmp_path: Path) -> None:
    tls = TlsFiles("/c/node.pem", "/c/node-key.pem", "/c/ca.pem")
    cluster = ClusterConfig(
        "fh", "10.0.0.1:6222", ("nats-route://10.0.0.1:6222", "nats-route://10.0.0.2:6222"),
        "n0", password="route-pw", tls=tls,
    )  # fmt: skip
    config = json.loads(server_config([], port=4222, store_dir=tmp_path, cluster=cluster))
    assert config["server_name"] == "n0"
    block = config["cluster"]
    assert block["routes"] == [
        "nats-route://route:route-pw@10.0.0.1:6222", "nats-route://route:route-pw@10.0.0.2:6222",
    ]  # fmt: skip
    assert block["authorization"] == {"user": "route", "password": "route-pw"}
    assert block["tls"] == {"cert_file": tls.cert, "key_file": tls.key, "ca_file": tls.ca,
                            "verify": True}  # fmt: skip


def test_the_embedded_cluster_block_needs_a_ca_for_route_tls(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    base = Settings(nats_cluster_listen="10.0.0.1:6222", nats_server_cert=str(cert),
                    nats_server_key=str(cert))  # fmt: skip
    with pytest.raises(ConfigError, match="FOUNDRY_NATS_TLS_CA"):
        nats_cluster(base)
    made = nats_cluster(Settings(nats_cluster_listen="10.0.0.1:6222"))
    assert made is not None and made.server_name == "n-10-0-0-1-6222"
    assert nats_cluster(Settings()) is None


def test_every_server_discovered_or_listed_gets_the_credentials() -> None:
    # nats-py gives URL userinfo only to the URL holding it, not to advertised servers
    got = nats_servers("nats://u:p%40ss@a:4222,nats://u:p%40ss@b:4222")
    assert got == {"servers": ["nats://a:4222", "nats://b:4222"], "user": "u", "password": "p@ss"}
    assert nats_servers("nats://tok@a:4222") == {"servers": ["nats://a:4222"], "token": "tok"}
    mixed = "nats://u:p@a:4222,nats://v:q@b:4222"
    assert nats_servers(mixed) == {"servers": mixed.split(",")}
    assert nats_servers("nats://a:4222") == {"servers": ["nats://a:4222"]}


def test_cluster_env_carries_the_cluster_and_no_child_gets_the_route_password() -> None:
    settings = Settings(
        nats_cluster_routes=("nats-route://10.0.0.1:6222",), nats_cluster_password="route-pw",
        redis_min_replicas=1, redis_sentinel_password="sent-pw",
    )  # fmt: skip
    env = cluster_env(settings)
    assert env["FOUNDRY_NATS_CLUSTER_ROUTES"] == "nats-route://10.0.0.1:6222"
    assert env["FOUNDRY_NATS_CLUSTER_PASSWORD"] == "route-pw"
    assert env["FOUNDRY_REDIS_MIN_REPLICAS"] == "1"
    assert env["FOUNDRY_REDIS_SENTINEL_PASSWORD"] == "sent-pw"
    assert "FOUNDRY_NATS_CLUSTER_NAME" not in cluster_env(Settings())
    assert "FOUNDRY_STREAM_REPLICAS" not in cluster_env(Settings())
    # a route is trusted beyond any user's permissions: no process the healer starts has it
    for role in ("worker", "gateway", "monitor"):
        child = env_for(settings, role, "coder" if role == "worker" else None)
        assert "FOUNDRY_NATS_CLUSTER_PASSWORD" not in child, role
        assert child.get("FOUNDRY_REDIS_SENTINEL_PASSWORD") == "sent-pw"


def test_compose_cluster_profile_runs_three_routed_nodes(tmp_path: Path) -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    nodes = {n: s for n, s in services.items() if "cluster" in (s.get("profiles") or [])}
    # Given the cluster profile, Then it holds three nats-server nodes, none published
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    config = tmp_path / "nats.conf"
    config.write_text(server_config(users(Names(""), {"admin": "pw"}), port=4222,
                                    store_dir=tmp_path / "js"))  # fmt: skip
    names, stores = set(), set()
    for name, node in nodes.items():
        args = node["command"]
        flags = dict(zip(args[::2], args[1::2], strict=True))
        assert not node.get("ports") and node["networks"] == ["internal"], name
        names.add(flags["--server_name"])
        volume, target = node["volumes"][0].split(":")
        stores.add(volume)
        assert target == "/data" and node["volumes_from"] == ["nats:ro"], name
        routes = flags["--routes"].split(",")
        assert sorted(routes) == [f"nats://nats-{i}:6222" for i in (1, 2, 3)], name
        assert flags["--cluster"] == "nats://0.0.0.0:6222" and flags["--cluster_name"]
        # and nats-server takes that command line with the stack's config (-t: check only)
        local = [a.replace("/secrets/nats.conf", str(config)) for a in args]
        checked = subprocess.run([find_nats_server(), *local, "-t"], capture_output=True,
                                 timeout=20)  # fmt: skip
        assert checked.returncode == 0, checked.stderr.decode()
    assert names == set(nodes) and len(stores) == 3
