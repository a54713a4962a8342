"""``python -m monitor``: host and cluster observer on FOUNDRY_MONITOR_HOST:FOUNDRY_MONITOR_PORT.

Exit codes: 0 stopped; 1 unexpected error; 2 bad configuration; 3 NATS
unreachable at start-up (Redis may be down: the monitor reports it).
``--check`` probes a running monitor's /health and exits 0 when healthy
(for container health checks).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request

from aiohttp import web

from foundry.errors import BrokerUnavailable, ConfigError
from foundry.runtime import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, setup_logging
from foundry.settings import Settings
from monitor.service import create_app


def check(settings: Settings) -> int:
    host = "127.0.0.1" if settings.monitor_host in ("0.0.0.0", "::") else settings.monitor_host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.monitor_port}/health", timeout=3):
            return EXIT_OK
    except Exception as exc:
        print(f"monitor unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor", description=__doc__)
    parser.add_argument("--check", action="store_true", help="probe /health and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        return check(settings)
    setup_logging(settings.log_level, "monitor")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        web.run_app(
            create_app(settings), host=settings.monitor_host, port=settings.monitor_port,
            print=lambda _: None, access_log=None, shutdown_timeout=5,
        )  # fmt: skip
    except BrokerUnavailable as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:
        print(f"monitor: {exc!r}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
