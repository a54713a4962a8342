"""Disk policy: over FOUNDRY_DISK_THRESHOLD, delete old files under FOUNDRY_CLEAN_PATHS only.

Oldest first, until the filesystem is back under the threshold; never outside
those paths, never through a symlink (links are left alone, as are their
targets), never the JetStream store or Redis data (refused at start-up).
Permission errors are recorded and the sweep continues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from foundry.errors import ConfigError
from healer.remediation.base import Action, Actuator, HostView, Outcome, Policy

if TYPE_CHECKING:
    from foundry.settings import Settings

log = logging.getLogger(__name__)
VAR = "FOUNDRY_CLEAN_PATHS"


def protected_paths(settings: Settings) -> list[Path]:
    """What a sweep may never touch: the data dir's JetStream store and Redis data."""
    data = settings.data_dir.resolve()
    return [data / "nats", data / "redis"]


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_clean_paths(settings: Settings) -> list[Path]:
    """Validate FOUNDRY_CLEAN_PATHS: refuse dangerous ones, warn about and skip missing ones."""
    data = settings.data_dir.resolve()
    usable = []
    for raw in settings.clean_paths:
        path = raw.resolve()
        if path == Path("/") or path == Path(path.anchor):
            raise ConfigError(f"{VAR}: refusing to clean {raw} (the filesystem root)")
        if _within(data, path):
            raise ConfigError(f"{VAR}: refusing to clean {raw}: it contains the data dir {data}")
        for guarded in protected_paths(settings):
            if _within(path, guarded) or _within(guarded, path):
                raise ConfigError(f"{VAR}: refusing to clean {raw}: it overlaps {guarded}")
        if not path.is_dir():
            log.warning("%s: %s does not exist or is not a directory; skipped", VAR, raw)
            continue
        usable.append(path)
    return usable


@dataclass
class SweepReport:
    files_deleted: int = 0
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)
    percent_after: float = 0.0


def _candidates(root: Path, min_age: float) -> list[tuple[float, int, Path]]:
    cutoff = time.time() - min_age
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in files:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):  # symlinks, sockets, fifos: left alone
                continue
            if st.st_mtime <= cutoff:
                found.append((st.st_mtime, st.st_size, path))
    found.sort()
    return found


def sweep(root: Path, threshold: float, min_age: float) -> SweepReport:
    """Delete old regular files under ``root``, oldest first, until below ``threshold``%."""
    report = SweepReport()
    real_root = root.resolve()
    for _, size, path in _candidates(root, min_age):
        if psutil.disk_usage(str(root)).percent < threshold:
            break
        if not _within(path.resolve(), real_root):  # a path component swapped for a link
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append(f"{path}: {exc.strerror or exc}")
            continue
        report.files_deleted += 1
        report.bytes_freed += size
    report.percent_after = psutil.disk_usage(str(root)).percent
    return report


class DiskPolicy(Policy):
    name = "disk"

    def __init__(self, settings: Settings, actuator: Actuator) -> None:
        super().__init__(settings, actuator)
        self.paths = check_clean_paths(settings)
        self.threshold = settings.disk_threshold

    def evaluate(self, view: HostView) -> list[Action]:
        actions = []
        for path in self.paths:
            try:
                percent = psutil.disk_usage(str(path)).percent
            except OSError:
                continue
            if percent >= self.threshold:
                actions.append(
                    Action(
                        self.name,
                        "clean",
                        str(path),
                        f"disk {percent:.1f}% ≥ {self.threshold:g}% (FOUNDRY_DISK_THRESHOLD)",
                        before={"disk_percent": percent},
                    )
                )
        return actions

    async def apply(self, action: Action) -> Outcome:
        report = await asyncio.to_thread(
            sweep, Path(action.target), self.threshold, self.settings.clean_min_age
        )
        after = {
            "disk_percent": report.percent_after,
            "files_deleted": report.files_deleted,
            "bytes_freed": report.bytes_freed,
            "errors": report.errors[:20],
        }
        if report.files_deleted:
            return Outcome("done", after, f"freed {report.bytes_freed} bytes")
        if report.errors:
            return Outcome("failed", after, "could not delete: " + "; ".join(report.errors[:3]))
        return Outcome(
            "skipped",
            after,
            f"nothing older than {self.settings.clean_min_age:g}s (FOUNDRY_CLEAN_MIN_AGE) to "
            f"delete; the disk stays at {report.percent_after:.1f}%",
        )
