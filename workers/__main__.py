"""``python -m workers --type <agent_type>``: run one worker process.

Exit codes: 0 drained and stopped; 1 unexpected error; 2 bad configuration or
arguments; 3 NATS, JetStream or Redis unreachable at start-up (JetStream and
Redis are waited for up to ``FOUNDRY_CONNECT_TIMEOUT``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

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


JETSTREAM_DOWN = (
    ServiceUnavailableError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    TimeoutError,
)


async def provisioned(js: JetStreamContext, settings: Settings, agent_type: str) -> None:
    """Ensure the streams and the type's consumers, waiting while JetStream cannot answer
    (a node that lost its cluster's quorum answers 503) for up to FOUNDRY_CONNECT_TIMEOUT."""
    deadline = time.monotonic() + settings.connect_timeout
    delay = 0.25
    while True:
        try:
            await ensure_streams(js, settings)
            await ensure_consumer(js, settings, agent_type)
            return
        except JETSTREAM_DOWN as exc:
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailable(
                    f"JetStream did not answer within {settings.connect_timeout:g}s ({exc!r})"
                ) from exc
            log.warning("JetStream not available yet (%r); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


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
        worker = Worker(
            settings,
            agent_type,
            handler,
            concurrency=args.concurrency,
            worker_id=args.worker_id,
            slot=args.slot,
        )
        try:
            nc = await connect_nats(settings, f"worker-{agent_type}")
        except BrokerUnavailable as exc:
            log.error("%s", exc)
            return EXIT_UNAVAILABLE
        worker.start_heartbeat(nc)  # alive while it waits for Redis and JetStream below
        try:
            redis = await connect_redis(settings)
        except CacheUnavailable as exc:
            log.error("%s", exc)
            await nc.close()
            return EXIT_UNAVAILABLE
        try:
            await provisioned(nc.jetstream(), settings, agent_type)
            log.info("worker %s serving %s with handler %s", worker.worker_id, agent_type, spec)
            await worker.run(nc, redis, stop)
            return EXIT_OK
        except BrokerUnavailable as exc:
            log.error("%s", exc)
            return EXIT_UNAVAILABLE
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
