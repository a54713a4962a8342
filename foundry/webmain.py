"""The ``main()`` of an HTTP service (gateway, monitor): settings, ``--check``, serve.

Exit codes as everywhere (foundry.runtime): 0 stopped; 1 unexpected error; 2
bad configuration; 3 NATS or Redis unreachable at start-up, or ``--check``
found the service unhealthy.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections.abc import Callable

from aiohttp import web

from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError
from foundry.runtime import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, setup_logging
from foundry.settings import Settings


def check_health(name: str, host: str, port: int) -> int:
    """Probe ``/health``: 0 when it answers 2xx, else 3 (for container health checks)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=3):
            return EXIT_OK
    except Exception as exc:
        print(f"{name} unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def serve(
    name: str,
    doc: str | None,
    argv: list[str] | None,
    app_factory: Callable[[Settings], web.Application],
    address: Callable[[Settings], tuple[str, int]],
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=doc)
    parser.add_argument("--check", action="store_true", help="probe /health and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = address(settings)
    if args.check:
        return check_health(name, host, port)
    setup_logging(settings.log_level, name)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        pass
    try:
        web.run_app(
            app_factory(settings),
            host=host,
            port=port,
            print=lambda _: None,
            access_log=None,
            shutdown_timeout=5,
        )
    except ConfigError as exc:  # raised by an app factory that checks its settings
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BrokerUnavailable, CacheUnavailable) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:
        print(f"{name}: {exc!r}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
