"""The benchmark runs end to end in its tiny mode, loses no task and leaves no process behind.

No timing is asserted: figures belong in the benchmark's report, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_quick_bench_runs_every_phase_and_loses_nothing(tmp_path: Path) -> None:
    # Given the benchmark in its quick mode, writing its JSON to a temporary folder
    # When it runs (it starts its own servers, baseline fleet and healer)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    # Then it exits 0 and prints the table with the machine-load note
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| measure | result | target |" in proc.stdout
    assert "machine load at start" in proc.stdout
    [path] = tmp_path.glob("bench-quick-*.json")
    result = json.loads(path.read_text())
    # and every phase completed every task it submitted
    for system in ("baseline", "foundry"):
        best = result["throughput"]["best"][system]
        assert best["completed"] == best["tasks"] and best["missing"] == 0, best
    http = result["http"]
    assert http["completed"] == http["accepted"] == http["tasks"], http
    for row in result["latency"]:
        assert row["completed"] == row["sent"], row
    # and the healing phases replaced the killed workers and lost no task under load
    heal = result["healing"]
    assert heal["kill9"]["seconds"]["n"] == 2
    assert all(k["new_pid"] != k["old_pid"] for k in heal["kill9"]["kills"])
    assert heal["sigstop"]["seconds"]["n"] == 1
    assert heal["under_load"]["lost"] == 0
    assert heal["under_load"]["completed"] == heal["under_load"]["tasks"]
    # and no process it started is still running
    assert result["pids"], "the report lists the pids it started"
    assert [role for role, pid in result["pids"].items() if _alive(pid)] == []
