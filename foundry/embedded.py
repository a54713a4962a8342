"""Embedded servers with credentials: secrets, server config files, client.env, cluster.env.

:func:`prepare` runs before the embedded servers start (``foundry up`` and
``python -m healer --embedded …`` both call it; it is idempotent). On the
first run it generates one NATS user per role and a Redis ACL user, with
random passwords kept 0600 under ``<data dir>/secrets/`` (0700); every run
rewrites the server config files from them (so no secret is ever on a
command line) and returns settings whose URLs carry the healer's credentials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from foundry.apitokens import create_token, load_tokens
from foundry.errors import ConfigError
from foundry.natsauth import (
    CLIENT,
    HEALER,
    ClusterConfig,
    TlsFiles,
    all_roles,
    inbox_prefix,
    server_config,
    service_roles,
    user_name,
    users,
)
from foundry.provision import max_payload
from foundry.roles import with_userinfo
from foundry.secrets import (
    SecretStore,
    env_text,
    private_dir,
    read_env_file,
    update_env_file,
    write_private,
)
from foundry.settings import Settings, local_gateway_url, split_urls
from foundry.urls import is_sentinel_url

REDIS_USER = "foundry"
NATS_CONF, REDIS_CONF = "nats.conf", "redis.conf"
CLIENT_ENV, CLUSTER_ENV = "client.env", "cluster.env"


def secrets_dir(settings: Settings) -> Path:
    return settings.data_dir / "secrets"


def client_env_path(settings: Settings) -> Path:
    return secrets_dir(settings) / CLIENT_ENV


def cluster_env_path(settings: Settings) -> Path:
    return secrets_dir(settings) / CLUSTER_ENV


def nats_config_path(settings: Settings) -> Path:
    return secrets_dir(settings) / NATS_CONF


def redis_config_path(settings: Settings) -> Path:
    return secrets_dir(settings) / REDIS_CONF


def url_port(urls: str, default: int) -> int:
    """The port of the first of the comma-separated ``urls``."""
    return urlsplit(split_urls(urls)[0]).port or default


def nats_store_dir(settings: Settings) -> Path:
    return settings.data_dir / "nats" / "jetstream"


def redis_data_dir(settings: Settings) -> Path:
    return settings.data_dir / "redis"


def redis_config(
    port: int,
    data_dir: Path,
    password: str,
    key_prefix: str = "foundry",
    persist: bool = True,
    bind: str = "127.0.0.1",
) -> str:
    """redis-server's config: listening on ``bind`` (loopback unless told), one ACL user
    for the cluster, the default user off.

    The user may touch only keys under ``key_prefix`` and no admin or dangerous
    command (CONFIG, FLUSHALL, KEYS, DEBUG, SHUTDOWN …).
    """
    lines = [
        f"bind {bind}",
        f"port {port}",
        f'dir "{data_dir}"',
        "daemonize no",
        "protected-mode yes",
        'save ""',
        f"appendonly {'yes' if persist else 'no'}",
        "user default off",
        f"user {REDIS_USER} on >{password} ~{key_prefix}:* resetchannels +@all -@admin -@dangerous",
    ]
    return "\n".join(lines) + "\n"


def server_tls(settings: Settings) -> TlsFiles | None:
    """The embedded nats-server's own certificate (FOUNDRY_NATS_SERVER_CERT / _KEY), with
    FOUNDRY_NATS_TLS_CA to verify its peers."""
    if not settings.nats_server_cert:
        return None
    if not settings.nats_server_key:
        raise ConfigError("FOUNDRY_NATS_SERVER_KEY: needed with FOUNDRY_NATS_SERVER_CERT")
    return TlsFiles(settings.nats_server_cert, settings.nats_server_key, settings.nats_tls_ca)


def nats_cluster(settings: Settings) -> ClusterConfig | None:
    """The embedded nats-server's ``cluster {}`` block, when FOUNDRY_NATS_CLUSTER_LISTEN is set.

    Routes use mutual TLS when the server has a certificate (the CA is then required)
    and authenticate with FOUNDRY_NATS_CLUSTER_PASSWORD when it is set.
    """
    if not settings.nats_cluster_listen:
        return None
    tls = server_tls(settings)
    if tls is not None and not tls.ca:
        raise ConfigError("FOUNDRY_NATS_TLS_CA: route TLS verifies the other servers with it")
    listen = settings.nats_cluster_listen
    name = settings.nats_server_name or "n-" + "".join(
        c if c.isalnum() else "-" for c in listen.strip("[]")
    )
    return ClusterConfig(
        name=settings.nats_cluster_name,
        listen=listen,
        routes=settings.nats_cluster_routes,
        server_name=name,
        password=settings.nats_cluster_password,
        tls=tls,
    )


def write_nats_config(settings: Settings, passwords: Mapping[str, str]) -> Path:
    store = nats_store_dir(settings)
    store.mkdir(parents=True, exist_ok=True)
    wants_tls = split_urls(settings.nats_url)[0].startswith("tls://")
    text = server_config(
        users(settings.names, passwords, settings.agent_types),
        port=url_port(settings.nats_url, 4222),
        store_dir=store,
        http_port=settings.nats_monitor_port,
        max_payload=max_payload(settings),
        tls=server_tls(settings) if wants_tls else None,
        cluster=nats_cluster(settings),
    )
    return write_private(nats_config_path(settings), text)


def write_redis_config(settings: Settings, password: str) -> Path:
    data = redis_data_dir(settings)
    data.mkdir(parents=True, exist_ok=True)
    text = redis_config(
        url_port(settings.redis_url, 6379), data, password, settings.names.key_prefix
    )
    return write_private(redis_config_path(settings), text)


def prepare(settings: Settings, embedded: Sequence[str]) -> Settings:
    """Secrets and config files for the ``embedded`` servers; the healer's settings back."""
    if not any(server in embedded for server in ("nats", "redis")):
        return settings
    private_dir(secrets_dir(settings))
    store = SecretStore(secrets_dir(settings))
    changes: dict[str, object] = {}
    client_url = settings.nats_url
    if "nats" in embedded:
        roles = all_roles(settings.agent_types)
        passwords = store.passwords("nats", roles)
        if settings.nats_cluster_listen and not settings.nats_cluster_password:
            # kept like the users' passwords; cluster.env hands it to the other nodes
            route = store.passwords("nats-route", ["route"])["route"]
            changes["nats_cluster_password"] = route
            settings = dataclasses.replace(settings, nats_cluster_password=route)
        write_nats_config(settings, passwords)
        names = settings.names
        changes["nats_url"] = with_userinfo(
            settings.nats_url, user_name(names, HEALER), passwords[HEALER]
        )
        changes["nats_role_passwords"] = {
            r: passwords[r] for r in service_roles(settings.agent_types)
        }
        changes["nats_inbox_prefix"] = inbox_prefix(names, HEALER)
        if not settings.nats_monitor_url and settings.nats_monitor_port:
            changes["nats_monitor_url"] = f"http://127.0.0.1:{settings.nats_monitor_port}"
        client_url = with_userinfo(settings.nats_url, user_name(names, CLIENT), passwords[CLIENT])
    if "redis" in embedded:
        if is_sentinel_url(settings.redis_url):
            raise ConfigError(
                "FOUNDRY_REDIS_URL: a redis+sentinel:// URL names servers of your own; "
                "none is embedded (start the Sentinels and Redis first)"
            )
        password = store.passwords("redis", [REDIS_USER])[REDIS_USER]
        write_redis_config(settings, password)
        changes["redis_url"] = with_userinfo(settings.redis_url, REDIS_USER, password)
    prepared = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    client = client_env_path(settings)
    kept = read_env_file(client) if client.exists() else {}  # e.g. the API token
    write_private(client, env_text({**kept, **client_env(prepared, client_url)}, CLIENT_ENV_HEADER))
    write_private(cluster_env_path(settings), env_text(cluster_env(prepared), CLUSTER_ENV_HEADER))
    return prepared


ADMIN_TOKEN_NAME = "foundry-up-admin"


def api_tokens_path(settings: Settings) -> Path:
    return secrets_dir(settings) / "api-tokens.jsonl"


def prepare_api_token(settings: Settings) -> Settings:
    """The gateway's token file, with an admin token whose plaintext is in ``client.env``.

    Made on the first ``foundry up``; kept while ``client.env`` holds a token the file
    knows. An operator's own ``FOUNDRY_API_TOKENS`` is used as it is.
    """
    if settings.api_tokens:
        return settings
    path = api_tokens_path(settings)
    client = client_env_path(settings)
    known = read_env_file(client).get("FOUNDRY_API_TOKEN", "") if client.exists() else ""
    if not (known and path.exists() and load_tokens(path).authenticate(known) is not None):
        private_dir(secrets_dir(settings))
        existing = load_tokens(path).by_digest.values() if path.exists() else ()
        name = ADMIN_TOKEN_NAME
        taken = {t.name for t in existing}
        for n in range(2, 1000):
            if name not in taken:
                break
            name = f"{ADMIN_TOKEN_NAME}-{n}"
        known = create_token(path, name, ["admin"])
    update_env_file(
        client, {"FOUNDRY_API_TOKEN": known, "FOUNDRY_GATEWAY_URL": gateway_url(settings)}
    )
    return dataclasses.replace(settings, api_tokens=str(path))


CLIENT_ENV_HEADER = """\
What a person needs to use this cluster: . <this file>   (POSIX shell)
NATS_URL is read by the nats CLI; FOUNDRY_* by the foundry CLI (which also reads
this file by itself). Keep it private: it holds the client user's password."""

CLUSTER_ENV_HEADER = """\
What another host needs to join this cluster (python -m healer with its fleet):
copy it there privately, set FOUNDRY_NATS_URL / FOUNDRY_REDIS_URL to addresses that
host can reach (the embedded servers listen on loopback), then source it.
TLS and cluster settings are paths and addresses: put that host's own certificate
files at those paths and set its FOUNDRY_NATS_CLUSTER_LISTEN / _SERVER_NAME."""


def gateway_url(settings: Settings) -> str:
    """Where the embedded gateway listens, as written to ``client.env``."""
    return local_gateway_url(settings.gateway_host, settings.gateway_port)


def client_env(settings: Settings, nats_url: str) -> dict[str, str]:
    """The keys of ``client.env``. Add a key here (or, from elsewhere, with
    :func:`foundry.secrets.update_env_file` on :func:`client_env_path`)."""
    entries = {"NATS_URL": nats_url, "FOUNDRY_GATEWAY_URL": gateway_url(settings)}
    if settings.namespace:
        entries["FOUNDRY_NAMESPACE"] = settings.namespace
    # the nats CLI's own variables for TLS and credentials files
    for key, value in (
        ("NATS_CA", settings.nats_tls_ca),
        ("NATS_CERT", settings.nats_tls_cert),
        ("NATS_KEY", settings.nats_tls_key),
        ("NATS_CREDS", settings.nats_creds),
    ):
        if value:
            entries[key] = value
    return entries


def cluster_env(settings: Settings) -> dict[str, str]:
    """The keys of ``cluster.env``: service credentials and TLS paths as FOUNDRY_* variables."""
    env = settings.to_env()
    keys = [
        "FOUNDRY_NATS_URL",
        "FOUNDRY_NATS_ROLE_PASSWORDS",
        "FOUNDRY_NATS_INBOX_PREFIX",
        "FOUNDRY_NATS_CREDS",
        "FOUNDRY_NATS_TLS_CA",
        "FOUNDRY_NATS_TLS_CERT",
        "FOUNDRY_NATS_TLS_KEY",
        "FOUNDRY_REDIS_URL",
        "FOUNDRY_REDIS_TLS_CA",
        "FOUNDRY_REDIS_TLS_CERT",
        "FOUNDRY_REDIS_TLS_KEY",
        "FOUNDRY_REDIS_SENTINEL_PASSWORD",
        "FOUNDRY_REDIS_MIN_REPLICAS",
        "FOUNDRY_NAMESPACE",
        "FOUNDRY_STREAM_REPLICAS",
        # the NATS cluster: the routes every node shares, their password, server TLS
        "FOUNDRY_NATS_CLUSTER_NAME",
        "FOUNDRY_NATS_CLUSTER_ROUTES",
        "FOUNDRY_NATS_CLUSTER_PASSWORD",
        "FOUNDRY_NATS_SERVER_CERT",
        "FOUNDRY_NATS_SERVER_KEY",
    ]
    if not settings.nats_cluster_routes:  # no cluster: its name and defaults say nothing
        keys = [k for k in keys if not k.startswith("FOUNDRY_NATS_CLUSTER_")]
    defaults = {"FOUNDRY_REDIS_MIN_REPLICAS": "0", "FOUNDRY_STREAM_REPLICAS": "0"}
    keys = [k for k in keys if env.get(k) != defaults.get(k)]
    return {key: env[key] for key in keys if env.get(key)}
