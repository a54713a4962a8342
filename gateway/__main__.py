"""``python -m gateway``: the HTTP API on FOUNDRY_GATEWAY_HOST:FOUNDRY_GATEWAY_PORT.

Exit codes: 0 stopped; 1 unexpected error; 2 bad configuration; 3 NATS or
Redis unreachable at start-up. ``--check`` probes a running gateway's
/health and exits 0 when healthy (for container health checks).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request

from aiohttp import web

from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError
from foundry.runtime import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, setup_logging
from foundry.settings import Settings
from gateway.app import create_app


def check(settings: Settings) -> int:
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.gateway_port}/health", timeout=3):
            return EXIT_OK
    except Exception as exc:
        print(f"gateway unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--check", action="store_true", help="probe /health and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        return check(settings)
    setup_logging(settings.log_level, "gateway")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        web.run_app(
            create_app(settings),
            host=settings.gateway_host,
            port=settings.gateway_port,
            print=lambda _: None,
            access_log=None,
            shutdown_timeout=5,
        )
    except (BrokerUnavailable, CacheUnavailable) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:
        print(f"gateway: {exc!r}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
