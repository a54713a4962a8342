"""``python -m workers --type <agent_type>``: run one worker process.

Exit codes: 0 drained and stopped; 1 unexpected error; 2 bad configuration or
arguments; 3 NATS or Redis unreachable at start-up.
"""

from __future__ import annotations

import argparse
import logging
import sys

from foundry import tracing
from foundry.connect import connect_nats, connect_redis
from foundry.errors import BrokerUnavailable, CacheUnavailable, ConfigError, InvalidAgentType
from foundry.names import validate_agent_type
from foundry.provision import ensure_consumer, ensure_streams
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
from workers.registry import handler_for
from workers.worker import Worker

log = logging.getLogger("workers")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--type", required=True, dest="agent_type", help="agent type to serve")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks at once")
    parser.add_argument("--worker-id", default=None, help="stable id (the healer sets it)")
    parser.add_argument("--slot", type=int, default=None, help="slot index in the fleet")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
        agent_type = validate_agent_type(args.agent_type)
        if args.concurrency is not None and args.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        spec, handler = handler_for(agent_type, settings.handlers)
        tracing.setup(settings, f"worker-{agent_type}")
    except (ConfigError, InvalidAgentType) as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, f"worker:{agent_type}")

    async def amain() -> int:
        stop = stop_event()
        try:
            nc = await connect_nats(settings, f"worker-{agent_type}")
            redis = await connect_redis(settings)
        except (BrokerUnavailable, CacheUnavailable) as exc:
            log.error("%s", exc)
            return EXIT_UNAVAILABLE
        try:
            js = nc.jetstream()
            await ensure_streams(js, settings)
            await ensure_consumer(js, settings, agent_type)
            worker = Worker(
                settings,
                agent_type,
                handler,
                concurrency=args.concurrency,
                worker_id=args.worker_id,
                slot=args.slot,
            )
            log.info("worker %s serving %s with handler %s", worker.worker_id, agent_type, spec)
            await worker.run(nc, redis, stop)
            return EXIT_OK
        except Exception:
            log.exception("worker failed")
            return EXIT_ERROR
        finally:
            await nc.drain() if nc.is_connected else await nc.close()
            await redis.aclose()
            tracing.current().shutdown()

    return run(amain)


if __name__ == "__main__":
    sys.exit(main())
