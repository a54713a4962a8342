"""A subprocess sandbox: own temp folder, minimal environment, rlimits, wall clock, output cap.

:func:`run_sandboxed` writes the given files into a fresh temporary folder,
starts the program there through :mod:`workers.builtin.launch` (which drops
root and sets the rlimits) in a new session, reads stdout and stderr up to a
cap, and kills the whole process group when the wall clock runs out, when the
output goes over the cap, when the program ends (stragglers) or when the
caller is cancelled. The folder is removed afterwards in every case.

This is defence in depth for code you mostly trust, not a security boundary:
rlimits do not isolate the network or the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("launch.py"))
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
READ_CHUNK = 64 * 1024
EXIT_POLL = 0.02  # seconds between looks at the program's exit status


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout: float  # wall clock, seconds
    cpu_seconds: int
    memory_bytes: int  # address space
    file_bytes: int  # largest file it may write
    max_procs: int  # processes and threads beyond what the sandbox user already runs
    output_bytes: int  # per stream (stdout, stderr)


@dataclass
class Outcome:
    """How a run ended. ``limit`` is set when the sandbox stopped it: timeout or output_bytes."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration: float
    limit: str | None
    workdir: str


def minimal_env(workdir: str) -> dict[str, str]:
    """The only variables the program sees: nothing of the worker's environment."""
    return {
        "PATH": SANDBOX_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def find_program(name: str) -> str | None:
    """An absolute path for ``name``, looked up on the sandbox's PATH (not the worker's)."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SANDBOX_PATH)


class _Capture:
    """Reads one stream into a buffer of at most ``cap`` bytes; sets ``overflow`` past it."""

    def __init__(self, cap: int, overflow: asyncio.Event) -> None:
        self.cap = cap
        self.overflow = overflow
        self.data = bytearray()
        self.truncated = False

    async def pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.data += chunk[: max(room, 0)]
                self.truncated = True
                self.overflow.set()
                return
            self.data += chunk


async def _exit_of(proc: asyncio.subprocess.Process) -> None:
    """Wait for the program itself to exit. ``proc.wait()`` would also wait for every
    background process that still holds its stdout or stderr."""
    while proc.returncode is None:  # noqa: ASYNC110 - no event exists for "leader exited"
        await asyncio.sleep(EXIT_POLL)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _prepare(workdir: str, files: dict[str, str], stdin: str | None) -> int:
    """Write the program's files; returns a descriptor open on its stdin text."""
    for name, text in files.items():
        Path(workdir, name).write_text(text, encoding="utf-8")
    stdin_path = Path(workdir, ".stdin")
    stdin_path.write_text(stdin or "", encoding="utf-8")
    return os.open(stdin_path, os.O_RDONLY)


def _remove_tree(path: str) -> None:
    """Remove ``path`` even when the program took permissions away from its subfolders."""
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)


async def run_sandboxed(
    argv: list[str],
    files: dict[str, str],
    limits: Limits,
    *,
    user: str = "",
    stdin: str | None = None,
) -> Outcome:
    """Run ``argv`` (absolute program path first) with ``files`` in a fresh temp folder."""
    workdir = tempfile.mkdtemp(prefix="foundry-exec-")
    proc: asyncio.subprocess.Process | None = None
    pumps: list[asyncio.Task[None]] = []
    try:
        stdin_fd = _prepare(workdir, files, stdin)
        spec = json.dumps(
            {
                "user": user,
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes,
                "max_procs": limits.max_procs,
            }
        )
        overflow = asyncio.Event()
        out, err = _Capture(limits.output_bytes, overflow), _Capture(limits.output_bytes, overflow)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                LAUNCHER,
                spec,
                *argv,
                cwd=workdir,
                env=minimal_env(workdir),
                stdin=stdin_fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        finally:
            os.close(stdin_fd)
        pumps = [
            asyncio.create_task(c.pump(s)) for c, s in ((out, proc.stdout), (err, proc.stderr))
        ]
        exited = asyncio.create_task(_exit_of(proc))
        overflowed = asyncio.create_task(overflow.wait())
        try:
            await asyncio.wait(
                {exited, overflowed}, timeout=limits.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
            overflowed.cancel()
        duration = time.monotonic() - started
        limit = None
        if proc.returncode is None:
            limit = "output_bytes" if overflow.is_set() else "timeout"
        _kill_group(proc.pid)  # the program, or what it left running in the background
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)  # returns once the pipes are closed too
        await asyncio.wait(pumps, timeout=1)
        if overflow.is_set():
            limit = limit or "output_bytes"
        return Outcome(
            proc.returncode,
            bytes(out.data),
            bytes(err.data),
            out.truncated,
            err.truncated,
            duration,
            limit,
            workdir,
        )
    finally:
        for pump in pumps:
            pump.cancel()
        if proc is not None:
            _kill_group(proc.pid)
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
        await asyncio.to_thread(_remove_tree, workdir)
