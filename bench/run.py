"""Command line of the benchmark: run, print one table, write JSON under bench/results/.

    python -m bench                    # the full run (~2 minutes), what `make bench` does
    python -m bench --quick            # a few hundred tasks, 2 kills: proves it runs end to end
    python -m bench --profile          # also sample a worker and the gateway with py-spy
    python -m bench --codec-compare    # uvloop / orjson / msgspec / json, baseline and Foundry
    python -m bench --code /tmp/copy   # run the services from a scratch copy of the code
    python -m bench --ab /tmp/copy     # Foundry as is vs from that copy (repeatable), 3 rounds

Exit codes: 0 the run completed (targets are reported, not asserted); 1 it failed or was
stopped (SIGINT / SIGTERM: every process it started is stopped first).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import compare, report
from bench.infra import ROOT
from bench.interrupt import Guard, Interrupted
from bench.machine import LoadWatch, top_others, versions
from bench.plan import FULL, QUICK, scaled
from bench.suite import Suite, SuiteOptions
from bench.variants import DEFAULT, Variant
from foundry import codec

RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per NATS throughput run")
    parser.add_argument("--rounds", type=int, default=None, help="baseline/Foundry rounds")
    parser.add_argument("--profile", action="store_true", help="py-spy a worker and the gateway")
    parser.add_argument("--codec-compare", action="store_true", help="uvloop / codec variants")
    parser.add_argument("--code", type=Path, default=None, help="run services from this copy")
    parser.add_argument(
        "--ab",
        type=Path,
        action="append",
        default=[],
        help="compare Foundry as is with Foundry from this copy of the code (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FOUNDRY_X=VALUE",
        help="extra setting for the cluster under test (repeatable), e.g. a tuning experiment",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    for item in args.env:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("FOUNDRY_"):
            parser.error(f"--env {item!r}: expected FOUNDRY_NAME=VALUE")
    args.env = tuple(tuple(item.split("=", 1)) for item in args.env)
    for flag, path in (("--code", args.code), *(("--ab", p) for p in args.ab)):
        if path is not None and not (path / "workers").is_dir():
            parser.error(f"{flag} {path}: no workers/ package there")
    return args


async def _suite(
    args: argparse.Namespace, stamp: str, guard: Guard
) -> tuple[dict[str, Any], LoadWatch]:
    plan = scaled(QUICK if args.quick else FULL, args.tasks)
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    options = SuiteOptions(
        pythonpath=(args.code.resolve(),) if args.code else (),
        extra_env=args.env,
        profile_dir=args.out / f"profile-{stamp}" if args.profile else None,
        keep=args.keep,
    )
    watch = LoadWatch()
    watch.start()
    suite = Suite(plan, options, watch)
    result = await suite.run(guard)
    result["plan"] = plan.to_json()
    result["mode"] = "quick" if args.quick else "full"
    if args.code:
        result["code"] = str(args.code)
    return result, watch


async def _compare(args: argparse.Namespace, guard: Guard) -> tuple[dict[str, Any], LoadWatch]:
    watch = LoadWatch()
    watch.start()
    tasks = args.tasks or (1000 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else (3 if args.ab else 2))
    job = compare.Compare(tasks, rounds, workers=2, http_clients=64, watch=watch)
    job.extra_env = args.env
    if args.ab:
        job.baseline_variants = (DEFAULT,)
        copies = tuple(Variant("uvloop", "orjson", path.resolve()) for path in args.ab)
        job.foundry_variants = (DEFAULT, *copies)
    result = await job.run(guard)
    mode = "ab" if args.ab else "codec-compare"
    result.update({"mode": mode, "tasks": tasks, "rounds": rounds, "env": dict(args.env)})
    return result, watch


async def amain(args: argparse.Namespace) -> int:
    guard = Guard()
    guard.install()
    clock = time.monotonic()
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    load_start = await asyncio.to_thread(top_others, 1.0)
    info = await asyncio.to_thread(versions)
    if args.codec_compare or args.ab:
        result, watch = await _compare(args, guard)
    else:
        result, watch = await _suite(args, stamp, guard)
    watch.mark("end")
    watch.stop()
    result.update(
        {
            "started_at": now.strftime("%Y-%m-%d %H:%M UTC"),
            "versions": info,
            "load_start": load_start,
            "load_end": await asyncio.to_thread(top_others, 1.0),
            "others_cores_run": round(watch.others_cores("start", "end"), 3),
            "ours_cores_run": round(watch.ours_cores("start", "end"), 3),
            "steal_cores_run": round(watch.steal_cores("start", "end"), 3),
            "phase_seconds": watch.phase_seconds(),
            "duration_seconds": round(time.monotonic() - clock, 1),
        }
    )
    comparing = args.codec_compare or args.ab
    text = compare.render(result) if comparing else report.render(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{result['mode']}-{stamp}.json"
    path.write_bytes(codec.dumps(result))
    if comparing:
        text += "\n\n" + report.load_note(result)
    print(text)
    print(f"\nfinished in {result['duration_seconds']:.0f} s; JSON: {path}")
    return 0


def _quiet_tls_close(record: logging.LogRecord) -> bool:
    # asyncio's stream protocol asks to keep a TLS connection half-open when the
    # server closes it; over TLS that request is ignored, with a warning per close
    return "eof_received() has no effect" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("asyncio").addFilter(_quiet_tls_close)
    try:
        return int(uvloop.run(amain(args)))
    except (Interrupted, KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print("bench: failed; every process it started was stopped", file=sys.stderr)
        return 1
