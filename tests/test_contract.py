"""Contract: schemathesis, every check, against a live gateway (run by a real healer on real
NATS and Redis) from the document it serves; once with a token, once without one."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from foundry.servers import free_port
from foundry.settings import Settings
from gateway.page import PAGE_PATHS
from tests.cluster import start_healer
from tests.conftest import ApiTokens, eventually
from tests.procs import ProcessGroup

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = "25"
OPEN_PATHS = {"/health", *PAGE_PATHS}


def schemathesis(
    doc: Path, base: str, report: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCHEMATHESIS), "run", str(doc), "--url", base, "--max-examples", MAX_EXAMPLES,
         "--seed", "1", "--workers", "1", "--request-timeout", "10", "--no-shrink",
         "--report", "har", "--report-har-path", str(report), *args],
        cwd=report.parent, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def har_statuses(report: Path, base: str) -> list[tuple[str, str, int]]:
    entries = json.loads(report.read_text())["log"]["entries"]
    return [
        (e["request"]["method"], e["request"]["url"][len(base) :].split("?")[0],
         e["response"]["status"])
        for e in entries
    ]  # fmt: skip


async def test_schemathesis_all_checks_with_and_without_a_token(
    make_settings: Callable[..., Settings],
    api_tokens: ApiTokens,
    procs: ProcessGroup,
    nc: Any,
    tmp_path: Path,
) -> None:
    # Given a healer running the gateway, the orchestrator and two workers, long-polls
    # capped at 1 s
    settings = make_settings(
        fleet={"coder": 1, "executor": 1},
        handlers={"coder": "echo", "executor": "echo"},
        gateway_port=free_port(), healer_port=free_port(), gateway_max_wait=1.0,
    )  # fmt: skip
    start_healer(procs, settings, "--services", "gateway,orchestrator")
    base = f"http://127.0.0.1:{settings.gateway_port}"
    auth = api_tokens.header(api_tokens.admin)
    async with ClientSession(headers=auth) as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/health") as resp:
                    if resp.status != 200 or (await resp.json())["infrastructure_agent"] != (
                        "running"
                    ):
                        return False
                # and an orchestrator leads (it answers approve: 404 for an unknown id)
                async with http.post(f"{base}/api/cluster/workflows/probe/approve") as resp:
                    return resp.status == 404
            except OSError:
                return False

        await eventually(ready, 45, interval=0.2)
        # and the document it serves (scope read)
        async with http.get(f"{base}/api/openapi.json") as resp:
            assert resp.status == 200
            doc = tmp_path / "openapi.json"
            doc.write_text(await resp.text())
    started = time.monotonic()
    # When schemathesis runs every check with the admin token
    with_token = tmp_path / "with-token.har"
    out = await asyncio.to_thread(
        schemathesis, doc, base, with_token, "--checks", "all",
        "--header", f"Authorization: {auth['Authorization']}",
    )  # fmt: skip
    # Then every check passes and no answer is a 5xx
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:] + procs.logs()
    answered = har_statuses(with_token, base)
    assert answered and all(status < 500 for _, _, status in answered), answered
    summary = [_cases(out.stdout)]
    assert {p for _, p, s in answered if 200 <= s < 300} >= {"/api/cluster/task/submit"}
    # When it runs again without a token
    without = tmp_path / "without-token.har"
    out = await asyncio.to_thread(
        schemathesis, doc, base, without, "--checks", "all",
    )  # fmt: skip
    # Then every answer but /health's is a 401
    answered = har_statuses(without, base)
    assert answered, out.stdout[-3000:]
    refused = [(m, p, s) for m, p, s in answered if p not in OPEN_PATHS]
    assert refused and all(s == 401 for _, _, s in refused), [a for a in refused if a[2] != 401]
    assert out.returncode == 0, out.stdout[-6000:]
    summary.append(_cases(out.stdout))
    took = time.monotonic() - started
    print(f"\nschemathesis in {took:.1f}s: with a token {summary[0]}; without {summary[1]}")


def _cases(stdout: str) -> str:
    found = re.search(r"(\d+) generated.*", stdout)
    return found.group(0).strip() if found else "?"
