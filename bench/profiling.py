"""``--profile``: sample a running process with py-spy and say where its CPU time goes.

py-spy (``pip install -e '.[bench]'``) attaches by pid without restarting the
process, in non-blocking mode so the target is not paused; only on-CPU samples
are kept (idle waits in the event loop are not). The collapsed stacks are
saved beside the JSON and summarised as: share of samples by package of the
innermost frame, the top functions by own time, and the top by inclusive time.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.infra import Procs, child_env
from foundry.pidfiles import stop_child


def find_py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if which is None:
        raise SystemExit("bench: --profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    return which


def _package(frame: str) -> str:
    """``name (path/to/file.py)`` → the top-level package or a readable module name."""
    start = frame.rfind("(")
    path = frame[start + 1 : -1] if start >= 0 else frame
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1].removesuffix(".py")
    parts = path.strip("/").split("/")
    return parts[0].removesuffix(".py") if parts else path


def summarise(stacks: Path, top: int = 15) -> dict[str, Any]:
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        pkg = _package(leaf)
        packages[pkg] = packages.get(pkg, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def share(table: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / total, 1)] for name, n in ranked] if total else []

    return {
        "samples": total,
        "stacks_file": str(stacks),
        "by_package_percent": share(packages),
        "top_own_percent": share(own),
        "top_inclusive_percent": share(inclusive),
    }


class Profiler:
    """One py-spy recording of ``pid``; :meth:`stop` ends it (SIGINT) and summarises."""

    def __init__(self, pid: int, out: Path, procs: Procs, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.procs = procs
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        args = [
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            "--duration",
            "300",
            "--output",
            str(self.out),
        ]
        self.proc = self.procs.start(f"py-spy-{self.pid}", args, child_env({}), find_py_spy())
        await asyncio.sleep(0.5)  # let it attach before the load starts

    async def stop(self) -> dict[str, Any]:
        proc = self.proc
        if proc is None:
            return {}
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                await asyncio.to_thread(stop_child, proc, 1.0)
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing; see {self.procs.log_dir}"}
        return summarise(self.out)
