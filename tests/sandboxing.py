"""For the sandbox tests: whether bubblewrap works here, and finding processes by a marker.

``require_bwrap`` skips a test, saying why, where the ``exec`` handler's probe
fails (bubblewrap missing, user namespaces refused); under ``CI=true`` it fails
instead, as the other tests that need a tool do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foundry.settings import Settings
from workers.builtin.isolation import decide

PROC_SCAN_MAX = 100_000  # /proc entries read per scan, at most


async def bwrap_refusal() -> str | None:
    """None when the default (bubblewrap) isolation works on this host, else why not."""
    return (await decide(Settings())).refusal


@pytest.fixture
async def require_bwrap() -> None:
    refusal = await bwrap_refusal()
    if refusal is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the exec sandbox does not work here: {refusal}")
    pytest.skip(f"the exec sandbox does not work here (make test installs bubblewrap): {refusal}")


def pids_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (one bounded pass over /proc)."""
    found = []
    for count, entry in enumerate(Path("/proc").iterdir()):
        if count >= PROC_SCAN_MAX:
            break
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found
