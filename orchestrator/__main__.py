"""``python -m orchestrator``: run workflows; one orchestrator leads cluster-wide (a KV lease).

    python -m orchestrator            # stand by, lead when the lease is free
    python -m orchestrator --check    # check the definitions, then ask a running orchestrator

Definitions: the built-in ``build`` plus every ``*.toml`` in FOUNDRY_WORKFLOWS_DIR,
all checked at start-up. Exit codes: 0 stopped; 1 unexpected error; 2 bad
configuration or a bad definition (the message names the file and the problem);
3 NATS or Redis unreachable at start-up, or ``--check`` got no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from foundry.connect import connect_nats
from foundry.contracts.workflow import WorkflowRequest, WorkflowVerb
from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError, ProvisioningError
from foundry.natsauth import ORCHESTRATOR
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
from orchestrator.definition import load_definitions
from orchestrator.service import Orchestrator

log = logging.getLogger("orchestrator")


async def check(settings: Settings) -> int:
    """0 when an orchestrator answers a ``get`` (a not-found answer counts), else 3."""
    try:
        nc = await connect_nats(settings, ORCHESTRATOR)
    except BrokerUnavailable as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        probe = WorkflowRequest(WorkflowVerb.GET, workflow_id="check-probe").to_payload()
        await nc.request(settings.names.workflows("get"), probe, timeout=3)
        return EXIT_OK
    except Exception as exc:
        print(f"orchestrator: no orchestrator answered ({exc!r})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="check definitions, probe a peer")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        definitions = load_definitions(settings.workflows_dir)
    except ConfigError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, "orchestrator")
    if args.check:
        settings = Settings.from_env(connect_timeout=3.0)
        return run(lambda: check(settings))
    log.info("workflows: %s", ", ".join(sorted(definitions)))
    service = Orchestrator(settings, definitions)

    async def amain() -> int:
        stop = stop_event()
        try:
            await service.run(stop)
            return EXIT_OK
        except (BrokerUnavailable, CacheUnavailable, ProvisioningError) as exc:
            log.error("%s", exc)
            return EXIT_UNAVAILABLE
        except asyncio.CancelledError:
            return EXIT_OK
        except Exception:
            log.exception("orchestrator failed")
            return EXIT_ERROR

    return run(amain)


if __name__ == "__main__":
    sys.exit(main())
