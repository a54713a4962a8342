"""The raw baseline worker: the minimal hand-written loop Foundry is compared with.

``python -m bench.baseline_worker ...`` (servers in ``BENCH_NATS_URL`` and
``BENCH_REDIS_URL``, which may carry passwords, or ``--nats`` / ``--redis``) pulls a batch,
then for each task, one at a time: decode it, store the echo result in Redis,
ack, and publish a completion notice. No heartbeats, events, status tracking,
fencing or leases. ``--loop`` and ``--codec`` choose the event loop and the
JSON codec, for the uvloop / orjson comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import redis.asyncio as aioredis

NATS_URL_VAR, REDIS_URL_VAR = "BENCH_NATS_URL", "BENCH_REDIS_URL"


def codec_pair(name: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if name == "orjson":
        import orjson

        return orjson.dumps, orjson.loads
    if name == "msgspec":
        import msgspec

        return msgspec.json.encode, msgspec.json.decode
    return (lambda obj: json.dumps(obj, separators=(",", ":")).encode()), json.loads


async def work(args: argparse.Namespace) -> None:
    dumps, loads = codec_pair(args.codec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats, name="bench-baseline")
    redis = aioredis.Redis.from_url(args.redis)
    psub = await nc.jetstream().pull_subscribe_bind(durable=args.durable, stream=args.stream)
    await nc.publish(args.ready, str(args.index).encode())
    done_subject, prefix, ttl = args.done, args.prefix, args.ttl
    while not stop.is_set():
        try:
            msgs = await psub.fetch(args.batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            task = loads(msg.data)
            task_id = task["task_id"]
            result = {
                "description": task["description"],
                "input": task.get("input"),
                "agent_type": "bench",
            }
            await redis.set(prefix + task_id, dumps(result), ex=ttl)
            await msg.ack()
            await nc.publish(done_subject, task_id.encode())
    await nc.drain()
    await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_worker")
    parser.add_argument("--nats", default=os.environ.get(NATS_URL_VAR), help=f"${NATS_URL_VAR}")
    parser.add_argument("--redis", default=os.environ.get(REDIS_URL_VAR), help=f"${REDIS_URL_VAR}")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--done", required=True, help="subject of completion notices")
    parser.add_argument("--ready", required=True, help="subject announcing the worker is up")
    parser.add_argument("--prefix", required=True, help="Redis key prefix of results")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--codec", choices=("orjson", "json", "msgspec"), default="orjson")
    args = parser.parse_args(argv)
    for flag, var in (("--nats", NATS_URL_VAR), ("--redis", REDIS_URL_VAR)):
        if not getattr(args, flag[2:]):
            parser.error(f"{flag}: give it, or set {var}")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(work(args))
    else:
        asyncio.run(work(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
