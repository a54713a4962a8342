"""The unit layer's rule, enforced: no test here may use a fixture that starts a server.

``tests/conftest.py`` starts nats-server and redis-server only for tests that
request them (directly or through ``settings``, ``nc``, ``redis``, ``gateway`` …).
A unit test that reaches one of them is a collection error, not a slow pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SERVER_FIXTURES = frozenset({"server_root", "nats_url", "redis_url", "own_nats", "own_redis"})
UNIT_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT_DIR not in item.path.parents:
            continue
        used = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} is a unit test but uses {sorted(used)}, which start servers"
            )
