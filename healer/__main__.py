"""``python -m healer``: supervise the fleet (and, with flags, services and embedded servers).

    python -m healer                                   # the worker fleet from FOUNDRY_FLEET
    python -m healer --services gateway,monitor        # ... plus these services
    python -m healer --embedded nats,redis             # ... plus embedded servers
    python -m healer --check                           # probe a running healer's /health

Exit codes: 0 stopped cleanly; 1 unexpected error; 2 bad configuration; 3 NATS
or Redis unreachable at start-up.
"""

from __future__ import annotations

import argparse
import logging
import sys

from foundry.embedded import prepare as prepare_embedded
from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError
from foundry.runtime import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    run,
    setup_logging,
    stop_event,
)
from foundry.settings import Settings
from foundry.webmain import check_health
from healer.service import HealerService

log = logging.getLogger("healer")


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m healer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--services", type=_list, default=[], help="gateway,monitor")
    parser.add_argument("--embedded", type=_list, default=[], help="nats,redis")
    parser.add_argument("--check", action="store_true", help="probe /health and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.check:
            return check_health("healer", "127.0.0.1", settings.healer_port)
        # embedded servers run with generated credentials; the healer uses its own
        settings = prepare_embedded(settings, args.embedded)
        service = HealerService(settings, args.services, args.embedded)
    except ConfigError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, "healer")

    async def amain() -> int:
        stop = stop_event()
        try:
            await service.run(stop)
            return EXIT_OK
        except (BrokerUnavailable, CacheUnavailable) as exc:
            log.error("%s", exc)
            await service.supervisor.shutdown(5.0)
            return EXIT_UNAVAILABLE
        except Exception:
            log.exception("healer failed")
            await service.supervisor.shutdown(5.0)
            return EXIT_ERROR

    return run(amain)


if __name__ == "__main__":
    sys.exit(main())
