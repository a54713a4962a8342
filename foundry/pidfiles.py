"""Process identity and stopping: pid files that survive pid reuse, and a graceful stop.

A pid file records the pid and the process's start time, so a later reader
(a restarted healer, a test teardown) acts only on that very process, never
on an unrelated one that reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from foundry import codec

_SAME_START = 0.01  # seconds: create_time is rounded differently by the readers


def write_pidfile(path: Path, pid: int) -> None:
    with contextlib.suppress(psutil.Error, OSError):
        created = psutil.Process(pid).create_time()
        path.write_bytes(codec.dumps({"pid": pid, "create_time": created}))


def recorded_process(path: Path) -> psutil.Process | None:
    """The process a pid file names, if it still runs (same pid and same start time)."""
    try:
        info = codec.loads(path.read_bytes())
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) < _SAME_START:
            return proc
    except (psutil.Error, ValueError, KeyError, TypeError, OSError):
        pass
    return None


def kill_recorded(folder: Path) -> None:
    """SIGKILL every still-running process recorded in ``folder``'s pid files."""
    for path in folder.glob("*.json"):
        proc = recorded_process(path)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(5)


def stop_child(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGCONT (it may be stopped), SIGTERM, wait ``grace``, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
