"""``python -m monitor``: host and cluster observer on FOUNDRY_MONITOR_HOST:FOUNDRY_MONITOR_PORT.

Exit codes: 0 stopped; 1 unexpected error; 2 bad configuration; 3 NATS
unreachable at start-up (Redis may be down: the monitor reports it).
``--check`` probes a running monitor's /health and exits 0 when healthy
(for container health checks).
"""

from __future__ import annotations

import sys

from foundry.settings import Settings
from foundry.webmain import serve
from monitor.service import create_app


def _address(settings: Settings) -> tuple[str, int]:
    return settings.monitor_host, settings.monitor_port


def main(argv: list[str] | None = None) -> int:
    return serve("monitor", __doc__, argv, create_app, _address)


if __name__ == "__main__":
    sys.exit(main())
