"""Running one program in a sandbox: its files, rlimits, wall clock and output cap.

:func:`run_sandboxed` starts the program through :mod:`workers.builtin.launch`
(which drops root and sets the rlimits) in a new session, reads stdout and
stderr up to a cap, and kills it when the wall clock runs out, when the output
goes over the cap or when the caller is cancelled.

How the program is isolated is the ``isolation`` argument:

- :class:`Boxed`: under bubblewrap (:mod:`workers.builtin.bwrap`), as a host uid
  leased for this run when the worker is root. The files live in the box's own
  tmpfs; killing bubblewrap ends every process in the box.
- :class:`Plain`: no isolation beyond rlimits and a minimal environment, in a
  fresh temporary folder removed afterwards; a root worker runs code as
  ``user``. The process group is killed when the program ends.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.builtin import bwrap
from workers.builtin.uidpool import UidPool

LAUNCHER = str(Path(__file__).with_name("launch.py"))
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
READ_CHUNK = 64 * 1024
EXIT_POLL = 0.02  # seconds between looks at the program's exit status
BWRAP_PROCS = 3  # bubblewrap's own processes in a box: outer, user-namespace helper, init


# Called with ("stdout" | "stderr", whole lines of what was captured) as the program runs.
OnOutput = Callable[[str, bytes], Awaitable[None]]


class NoFreeUid(Exception):
    """Every uid of the sandbox range is in use."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout: float  # wall clock, seconds
    cpu_seconds: int
    memory_bytes: int  # address space
    file_bytes: int  # largest file it may write
    max_procs: int  # processes and threads beyond what the sandbox's uid already runs
    output_bytes: int  # per stream (stdout, stderr)


@dataclass(frozen=True)
class Plain:
    """No isolation: a temporary folder, rlimits, and ``user`` when the worker is root."""

    user: str = ""


@dataclass(frozen=True)
class Boxed:
    """Under bubblewrap; ``pool`` leases the host uid (None: the worker's own uid)."""

    bwrap: bwrap.Bwrap
    pool: UidPool | None
    tmp_bytes: int
    network: bool = False


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


def minimal_env(workdir: str, tmpdir: str | None = None) -> dict[str, str]:
    """The only variables the program sees: nothing of the worker's environment."""
    return {
        "PATH": SANDBOX_PATH,
        "HOME": workdir,
        "TMPDIR": tmpdir or workdir,
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

    def __init__(
        self,
        cap: int,
        overflow: asyncio.Event,
        name: str = "stdout",
        on_output: OnOutput | None = None,
    ) -> None:
        self.cap = cap
        self.overflow = overflow
        self.data = bytearray()
        self.truncated = False
        self.name, self.on_output, self._sent = name, on_output, 0

    async def _lines(self, final: bool = False) -> None:
        """Hand complete lines captured so far (everything, when ``final``) to ``on_output``."""
        if self.on_output is None:
            return
        end = len(self.data) if final else self.data.rfind(b"\n", self._sent) + 1
        if end - self._sent >= READ_CHUNK:  # a long line without a newline: pass it on
            end = len(self.data)
        if end > self._sent:
            chunk, self._sent = bytes(self.data[self._sent : end]), end
            with contextlib.suppress(Exception):
                await self.on_output(self.name, chunk)

    async def pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(READ_CHUNK):
            if self.truncated:
                continue  # read on, to the end: a paused pipe would never report its close
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.data += chunk[: max(room, 0)]
                self.truncated = True
                self.overflow.set()
                await self._lines(final=True)
                continue
            self.data += chunk
            await self._lines()
        await self._lines(final=True)


async def _exit_of(proc: asyncio.subprocess.Process) -> None:
    """Wait for the program itself to exit. ``proc.wait()`` would also wait for every
    background process that still holds its stdout or stderr."""
    while proc.returncode is None:  # noqa: ASYNC110 - no event exists for "leader exited"
        await asyncio.sleep(EXIT_POLL)


async def _settle(proc: asyncio.subprocess.Process) -> None:
    """Wait, bounded, until the program has exited and its pipes are closed: processes in
    a box die a moment after bubblewrap, and ``proc.wait()`` returns at once once the
    exit status is known, pipes open or not."""

    async def eof(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(READ_CHUNK):
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(proc.wait(), eof(proc.stdout), eof(proc.stderr)), 5)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _memfd(name: str, text: str) -> int:
    """A readable descriptor holding ``text`` (inheritable through ``pass_fds``)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    data = text.encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _remove_tree(path: str) -> None:
    """Remove ``path`` even when the program took permissions away from its subfolders."""
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Prepared:
    """What one run needs before it starts, and what to release after it."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    stdin_fd: int
    workdir: str
    pass_fds: list[int] = field(default_factory=list)
    lease_fd: int | None = None
    tempdir: str | None = None

    def release(self) -> None:
        for fd in (self.stdin_fd, *self.pass_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.lease_fd is not None:
            os.close(self.lease_fd)  # drops the uid's lease
            self.lease_fd = None


def _launcher(spec: dict[str, Any], limits: Limits) -> list[str]:
    spec.update(
        cpu_seconds=limits.cpu_seconds,
        memory_bytes=limits.memory_bytes,
        file_bytes=limits.file_bytes,
        max_procs=limits.max_procs,
    )
    return [sys.executable, "-I", "-S", LAUNCHER, json.dumps(spec)]


def _prepare_boxed(
    box: Boxed, argv: list[str], files: dict[str, str], limits: Limits, stdin: str | None
) -> _Prepared:
    spec: dict[str, Any] = {"extra_procs": BWRAP_PROCS}
    inside = bwrap.INSIDE_NOBODY
    lease_fd = None
    if box.pool is not None:
        lease = box.pool.acquire()
        if lease is None:
            raise NoFreeUid(f"all uids {box.pool.first}-{box.pool.last} are running sandboxes")
        inside, lease_fd = lease
        spec.update(uid=inside, gid=inside)
    fds = {name: _memfd(name, text) for name, text in files.items()}
    env = minimal_env(bwrap.WORKDIR, bwrap.TMPDIR)
    cmd = bwrap.command(
        box.bwrap, argv, fds, env, uid=inside, network=box.network, tmp_bytes=box.tmp_bytes
    )
    return _Prepared(
        _launcher(spec, limits) + cmd,
        "/",
        minimal_env("/", "/tmp"),
        _memfd("stdin", stdin or ""),
        bwrap.WORKDIR,
        list(fds.values()),
        lease_fd,
    )


def _prepare_plain(
    plain: Plain, argv: list[str], files: dict[str, str], limits: Limits, stdin: str | None
) -> _Prepared:
    workdir = tempfile.mkdtemp(prefix="foundry-exec-")
    for name, text in files.items():
        Path(workdir, name).write_text(text, encoding="utf-8")
    spec = {"user": plain.user}
    return _Prepared(
        _launcher(spec, limits) + argv,
        workdir,
        minimal_env(workdir),
        _memfd("stdin", stdin or ""),
        workdir,
        tempdir=workdir,
    )


def _exit_status(code: int | None, boxed: bool) -> int | None:
    """bubblewrap reports a program killed by signal N as 128 + N, like a shell: as -N here."""
    if boxed and code is not None and 128 < code < 128 + signal.NSIG:
        return 128 - code
    return code


async def run_sandboxed(
    argv: list[str],
    files: dict[str, str],
    limits: Limits,
    *,
    isolation: Plain | Boxed | None = None,
    stdin: str | None = None,
    on_output: OnOutput | None = None,
) -> Outcome:
    """Run ``argv`` (absolute program path first) with ``files`` in its work folder;
    ``on_output`` gets its stdout and stderr line by line as they come."""
    isolation = isolation or Plain()
    if isinstance(isolation, Boxed):
        prep = _prepare_boxed(isolation, argv, files, limits, stdin)
    else:
        prep = _prepare_plain(isolation, argv, files, limits, stdin)
    proc: asyncio.subprocess.Process | None = None
    pumps: list[asyncio.Task[None]] = []
    try:
        overflow = asyncio.Event()
        out = _Capture(limits.output_bytes, overflow, "stdout", on_output)
        err = _Capture(limits.output_bytes, overflow, "stderr", on_output)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *prep.command,
            cwd=prep.cwd,
            env=prep.env,
            stdin=prep.stdin_fd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=prep.pass_fds,
        )
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
        await asyncio.wait(pumps, timeout=5)
        if overflow.is_set():
            limit = limit or "output_bytes"
        return Outcome(
            _exit_status(proc.returncode, isinstance(isolation, Boxed)),
            bytes(out.data),
            bytes(err.data),
            out.truncated,
            err.truncated,
            duration,
            limit,
            prep.workdir,
        )
    finally:
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.wait(pumps, timeout=1)
        if proc is not None:
            _kill_group(proc.pid)
            await _settle(proc)
        prep.release()
        if prep.tempdir is not None:
            await asyncio.to_thread(_remove_tree, prep.tempdir)
