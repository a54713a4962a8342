"""Which NATS credentials each process gets: the healer's children see only their own.

The healer holds ``FOUNDRY_NATS_ROLE_PASSWORDS`` (role → password) and gives each
process it launches a ``FOUNDRY_NATS_URL`` carrying that process's role user,
the role's own reply prefix, and an empty password list, so a worker of type T
knows worker-T's password and nothing else.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit, urlunsplit

from foundry.natsauth import HEALER, inbox_prefix, user_name
from foundry.settings import Settings, split_urls


def with_userinfo(urls: str, user: str, password: str) -> str:
    """Each of the comma-separated ``urls`` with ``user:password@`` (replacing any)."""
    out = []
    for url in split_urls(urls):
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}")))
    return ",".join(out)


def without_userinfo(urls: str) -> str:
    out = []
    for url in split_urls(urls):
        parts = urlsplit(url)
        out.append(urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])))
    return ",".join(out)


def role_env(settings: Settings, role: str) -> dict[str, str]:
    """Environment overrides for a child process of ``role``.

    With per-role passwords known, a role without one (a server, a type added
    since they were generated) gets no NATS credentials at all rather than the
    healer's; without any, the child inherits the URL as configured.
    """
    # only a healer keeps the list: it hands each of its children that child's own
    env = {} if role == HEALER else {"FOUNDRY_NATS_ROLE_PASSWORDS": ""}
    password = settings.nats_role_passwords.get(role)
    if password is None and settings.nats_role_passwords:
        env["FOUNDRY_NATS_URL"] = without_userinfo(settings.nats_url)
    if password is not None:
        names = settings.names
        env["FOUNDRY_NATS_URL"] = with_userinfo(settings.nats_url, user_name(names, role), password)
        env["FOUNDRY_NATS_INBOX_PREFIX"] = inbox_prefix(names, role)
    return env


def role_settings(settings: Settings, role: str) -> Settings:
    """``settings`` as a process of ``role`` sees them (for services run in-process)."""
    password = settings.nats_role_passwords.get(role)
    if password is None:
        return dataclasses.replace(settings, nats_role_passwords={})
    names = settings.names
    return dataclasses.replace(
        settings,
        nats_url=with_userinfo(settings.nats_url, user_name(names, role), password),
        nats_inbox_prefix=inbox_prefix(names, role),
        nats_role_passwords={},
    )
