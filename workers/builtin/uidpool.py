"""Leases on host uids for sandboxes: each running sandbox of a root worker has its own uid.

A lease is an exclusive ``flock`` on ``<lock dir>/<uid>.lock``, so it holds
across every worker process of the host, and the kernel drops it when its
holder exits: a killed worker never leaks a uid. Uids that name an account in
the passwd database are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pwd
import stat
import tempfile
from pathlib import Path

MAX_SCAN = 4096  # uids tried per lease, however wide the range


def default_lock_dir() -> Path:
    run = Path("/run")
    if run.is_dir() and os.access(run, os.W_OK):
        return run / "foundry-exec-uids"
    return Path(tempfile.gettempdir()) / f"foundry-exec-uids-{os.geteuid()}"


def parse_range(text: str) -> tuple[int, int] | None:
    """``"60000-60999"`` → (60000, 60999); empty → None (validated by the settings)."""
    if not text:
        return None
    first, _, last = text.partition("-")
    return int(first), int(last)


class UidPool:
    """The uids ``first``..``last`` (inclusive), leased one per sandbox."""

    def __init__(self, first: int, last: int, lock_dir: Path | None = None) -> None:
        self.first, self.last = first, last
        self.lock_dir = lock_dir or default_lock_dir()
        self._next = itertools.count()

    def check(self) -> None:
        """Create the lock folder, private to this user; raise OSError saying what is wrong."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.lock_dir, 0o700)
        info = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise OSError(f"{self.lock_dir} is not a folder owned by uid {os.geteuid()}")
        if info.st_mode & 0o077:
            raise OSError(f"{self.lock_dir} is open to other users (mode {info.st_mode & 0o777:o})")

    def acquire(self) -> tuple[int, int] | None:
        """A free uid and the descriptor that holds its lease, or None when all are taken."""
        size = self.last - self.first + 1
        start = next(self._next)
        for step in range(min(size, MAX_SCAN)):
            uid = self.first + (start + step) % size
            if _has_account(uid):
                continue
            fd = os.open(
                self.lock_dir / f"{uid}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return uid, fd
        return None


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
