"""Task code tries to leave the exec sandbox: secrets, network, processes, other tasks, files.

Each test runs real programs under bubblewrap (skipped where it does not work,
failed under CI=true) and checks from the host that the attempt got nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from foundry.settings import ExecSettings, Settings
from tests.conftest import eventually
from tests.fakes import make_ctx
from tests.procs import ROOT, ProcessGroup
from tests.sandboxing import pids_with, require_bwrap
from tests.test_flow import submit, wait_task
from workers.builtin.exec import ExecHandler, exec_handler
from workers.handlers import TaskFailed

pytestmark = pytest.mark.usefixtures(require_bwrap.__name__)

SNOOP_ENVIRON = """
import json, os, sys
worker = int(sys.argv[1]) if len(sys.argv) > 1 else int(open("worker.pid").read())
seen = {}
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            seen[name] = open(f"/proc/{name}/environ", "rb").read().decode(errors="replace")
        except OSError as exc:
            seen[name] = type(exc).__name__
try:
    worker_env = open(f"/proc/{worker}/environ", "rb").read().decode(errors="replace")
except OSError as exc:
    worker_env = type(exc).__name__
print(json.dumps({"pids": sorted(seen), "environs": seen, "worker": worker_env}))
"""


def marker() -> str:
    """A sleep duration unlikely to appear on the host by chance: it names the test's processes."""
    return f"{300 + secrets.randbelow(1000)}.{secrets.randbelow(10**6):06d}"


async def run(task_input: Any, settings: Settings | None = None) -> dict[str, Any]:
    return await exec_handler(make_ctx("executor", task_input, settings))


async def test_worker_secrets_are_not_visible_to_task_code(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given an exec worker process that (wrongly) holds secrets in its environment
    settings = make_settings(handlers={"executor": "exec"})
    gw = await make_gateway(settings)
    worker = procs.worker(
        settings,
        "executor",
        FOUNDRY_LLM_API_KEY="sk-leak-llm-0001",
        FOUNDRY_WEBHOOK_SECRET="whsec-leak-0002",
        AWS_SECRET_ACCESS_KEY="aws-leak-0003",
    )
    # When task code reads /proc/*/environ and the worker's own /proc/<pid>/environ
    code = SNOOP_ENVIRON.replace('int(open("worker.pid").read())', str(worker.pid))
    await submit(gw, agent_type="executor", input={"code": code}, task_id="snoop-1")
    rec = await wait_task(gw, "snoop-1", wait=60)
    assert rec["status"] == "completed", (rec, procs.logs())
    # Then no secret shows anywhere, the worker is not there, and only the box's own
    # processes are visible
    stdout = rec["result"]["stdout"]
    for leak in ("sk-leak-llm-0001", "whsec-leak-0002", "aws-leak-0003", "FOUNDRY_"):
        assert leak not in stdout
    seen = json.loads(stdout)
    assert seen["worker"] in ("FileNotFoundError", "ProcessLookupError", "PermissionError")
    assert str(worker.pid) not in seen["pids"] or worker.pid <= 3
    assert len(seen["pids"]) <= 4, seen["pids"]


async def test_no_network_not_even_the_hosts_loopback(nats_url: str, redis_url: str) -> None:
    # Given the ports of the suite's NATS and Redis (listening on the host's loopback)
    targets = [
        ("127.0.0.1", urlsplit(nats_url).port or 4222),
        ("127.0.0.1", urlsplit(redis_url).port or 6379),
        ("127.0.0.1", 9),
    ]
    code = (
        "import json, socket, sys\n"
        "out = {}\n"
        f"for host, port in {targets!r}:\n"
        "    s = socket.socket()\n"
        "    s.settimeout(3)\n"
        "    try:\n"
        "        s.connect((host, port))\n"
        "        out[port] = 'connected'\n"
        "    except OSError as exc:\n"
        "        out[port] = type(exc).__name__\n"
        "    finally:\n"
        "        s.close()\n"
        "print(json.dumps(out))\n"
    )
    # When task code connects to each
    out = await run({"code": code})
    results = json.loads(out["stdout"])
    # Then every connection fails: the box has a loopback of its own, and nothing else
    assert out["network"] is False
    assert len(results) == 3 and "connected" not in results.values(), results
    # And when the operator allows networked tasks, one that asks reaches the host's NATS
    allowed = await run(
        {"code": code, "network": True}, Settings(exec=ExecSettings(allow_network=True))
    )
    assert json.loads(allowed["stdout"])[str(targets[0][1])] == "connected"
    assert allowed["network"] is True


async def test_network_needs_the_operators_consent() -> None:
    with pytest.raises(TaskFailed) as info:
        await run({"code": "print(1)", "network": True})
    assert "FOUNDRY_EXEC_ALLOW_NETWORK=1" in str(info.value)


async def test_background_processes_end_with_the_task_setsid_included() -> None:
    # Given task code that starts sleeps in a new session and in a double fork, then exits
    mark = marker()
    code = (
        f"setsid sleep {mark} &\n"
        f"( sleep {mark} & ) &\n"
        "for i in $(seq 50); do pgrep -c -f 'sleep "
        + mark
        + "' >/dev/null && break; sleep 0.05; done\n"
        f"pgrep -c -f 'sleep {mark}' || echo 0\n"
    )
    out = await run({"language": "bash", "code": code})
    # Then they had started, and none is left on the host once the task is over
    assert int(out["stdout"].split()[-1]) >= 1, out
    await eventually(lambda: not pids_with(f"sleep\0{mark}"), 5)


async def test_timeout_kills_the_whole_tree() -> None:
    # Given task code with background processes (one in its own session) that outlives its timeout
    mark = marker()
    code = f"setsid sleep {mark} &\n( sleep {mark} & )\nsleep {mark}\n"
    task = asyncio.ensure_future(run({"language": "bash", "code": code, "limits": {"timeout": 2}}))
    try:
        await eventually(lambda: len(pids_with(f"sleep\0{mark}")) >= 3, 10)
    finally:
        # When the timeout fires, the task fails naming it ...
        with pytest.raises(TaskFailed) as info:
            await task
    assert info.value.result["limit"] == "timeout"
    # ... and every process of the tree is gone
    await eventually(lambda: not pids_with(f"sleep\0{mark}"), 5)


async def test_a_task_cannot_touch_another_running_tasks_folder() -> None:
    # Given task A running, watching its work folder for an intruder's file
    mark = marker()
    watcher = (
        "echo mine > mine.txt\n"
        f"sleep {mark} &\n"
        "for i in $(seq 100); do\n"
        "  [ -e intruder.txt ] && { echo INTRUDED; exit 0; }; sleep 0.05\n"
        "done\n"
        "id -u; ls; echo clean\n"
    )
    a = asyncio.ensure_future(run({"language": "bash", "code": watcher}))
    await eventually(lambda: pids_with(f"sleep\0{mark}"), 10)
    # When task B writes into the same path, looks for A's file and for host sandboxes
    intruder = (
        "id -u\n"
        "echo x > /sandbox/intruder.txt && echo wrote-own\n"
        "find / -xdev -name mine.txt 2>/dev/null | head -5\n"
        "ls -d /tmp/foundry-exec-* 2>/dev/null\n"
        "echo end\n"
    )
    b = await run({"language": "bash", "code": intruder})
    out_a = await a
    # Then B wrote only into its own box, found nothing of A's, and A never saw B's file
    assert "INTRUDED" not in out_a["stdout"] and out_a["stdout"].strip().endswith("clean")
    assert "intruder.txt" not in out_a["stdout"]
    assert "mine.txt" not in b["stdout"] and "foundry-exec-" not in b["stdout"]
    assert "wrote-own" in b["stdout"]
    # and the two ran as different uids when the worker is root (one per concurrent task)
    if os.geteuid() == 0:
        assert out_a["stdout"].split()[0] != b["stdout"].split()[0]


async def test_host_files_are_not_visible(settings: Settings, tmp_path: Path) -> None:
    # Given a data dir holding a secret, the checkout, and the worker's home
    data = settings.data_dir
    (data / "secrets").mkdir(parents=True)
    (data / "secrets" / "cluster.env").write_text("FOUNDRY_REDIS_URL=redis://u:pw@x\n")
    paths = [str(data), str(data / "secrets" / "cluster.env"), str(ROOT), str(tmp_path)]
    paths += ["/root", _home(), "/home", "/work", "/etc/passwd", "/etc/shadow"]
    code = (
        "import json, os\n"
        "out = {}\n"
        f"for p in {paths!r}:\n"
        "    out[p] = 'visible' if os.path.lexists(p) else 'absent'\n"
        "print(json.dumps(out))\n"
    )
    # When task code looks for each
    out = await run({"code": code})
    # Then none exists in the box
    seen = json.loads(out["stdout"])
    assert set(seen.values()) == {"absent"}, seen


async def test_the_system_is_read_only() -> None:
    code = (
        "import json\n"
        "out = {}\n"
        "for p in ['/usr/evil', '/evil', '/etc/evil', '/proc/evil']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        out[p] = 'written'\n"
        "    except OSError as exc:\n"
        "        out[p] = type(exc).__name__\n"
        "open('/tmp/ok', 'w').write('x')\n"
        "print(json.dumps(out))\n"
    )
    out = await run({"code": code})
    assert "written" not in json.loads(out["stdout"]).values(), out["stdout"]
    assert not _exists(Path("/usr/evil"))


async def test_missing_bubblewrap_refuses_to_run_code(caplog: pytest.LogCaptureFixture) -> None:
    # Given a worker whose bubblewrap cannot be found
    handler = ExecHandler()
    settings = Settings(exec=ExecSettings(bwrap="/nonexistent/bwrap"))
    await handler.setup(settings)
    # Then it says so at start, and every task fails with the reason instead of running
    assert "not installed" in caplog.text
    with pytest.raises(TaskFailed) as info:
        await handler(make_ctx("executor", {"code": "print('ran')"}, settings))
    assert "no sandbox" in str(info.value) and "FOUNDRY_EXEC_ISOLATION=none" in str(info.value)
    assert "bubblewrap" in str(info.value)


def _home() -> str:
    return os.path.expanduser("~")


def _exists(path: Path) -> bool:
    return path.exists()
