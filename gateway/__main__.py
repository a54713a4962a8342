"""``python -m gateway``: the HTTP API on FOUNDRY_GATEWAY_HOST:FOUNDRY_GATEWAY_PORT.

Exit codes: 0 stopped; 1 unexpected error; 2 bad configuration; 3 NATS or
Redis unreachable at start-up. ``--check`` probes a running gateway's
/health and exits 0 when healthy (for container health checks).
"""

from __future__ import annotations

import sys

from foundry.settings import Settings
from foundry.webmain import serve
from gateway.app import create_app


def _address(settings: Settings) -> tuple[str, int]:
    return settings.gateway_host, settings.gateway_port


def main(argv: list[str] | None = None) -> int:
    return serve("gateway", __doc__, argv, create_app, _address)


if __name__ == "__main__":
    sys.exit(main())
