"""The ``exec`` built-in: real programs in the bubblewrap sandbox, each limit hit for real."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest

from foundry.settings import ExecSettings, Settings
from tests.conftest import eventually
from tests.fakes import make_ctx
from tests.sandboxing import require_bwrap
from workers.builtin.exec import exec_handler
from workers.builtin.uidpool import parse_range
from workers.handlers import TaskFailed

MiB = 1024 * 1024
pytestmark = pytest.mark.usefixtures(require_bwrap.__name__)


async def run(task_input: Any, settings: Settings | None = None) -> dict[str, Any]:
    return await exec_handler(make_ctx("executor", task_input, settings))


async def run_failing(task_input: Any, settings: Settings | None = None) -> TaskFailed:
    with pytest.raises(TaskFailed) as info:
        await run(task_input, settings)
    return info.value


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("foundry-exec-*")}


async def test_python_success() -> None:
    # When a short Python program runs
    out = await run({"code": "import sys\nprint('hello')\nprint('warn', file=sys.stderr)"})
    # Then its exit code, output and duration come back
    assert out["exit_code"] == 0 and out["signal"] is None and out["limit"] is None
    assert out["stdout"] == "hello\n" and out["stderr"] == "warn\n"
    assert out["duration_seconds"] > 0 and out["language"] == "python"


async def test_bash_non_zero_exit_is_a_result_not_a_failure() -> None:
    out = await run({"language": "bash", "code": "echo partial; echo oops >&2; exit 3"})
    assert out["exit_code"] == 3 and out["stdout"] == "partial\n" and out["stderr"] == "oops\n"
    assert out["limit"] is None


async def test_stdin_is_passed() -> None:
    out = await run({"code": "print(input()[::-1])", "stdin": "olleh\n"})
    assert out["stdout"] == "hello\n"


async def test_wall_clock_timeout_names_the_limit() -> None:
    # Given a program that sleeps past its 1 s timeout
    err = await run_failing({"code": "import time; time.sleep(60)", "limits": {"timeout": 1}})
    # Then the task fails naming the limit and the setting, and the program was killed
    assert "timeout" in str(err) and "FOUNDRY_EXEC_TIMEOUT" in str(err)
    assert err.result["limit"] == "timeout" and err.result["signal"] == "SIGKILL"


async def test_memory_limit() -> None:
    code = "block = bytearray(1024 * 1024 * 1024)\nprint('allocated')"
    err = await run_failing({"code": code, "limits": {"memory_bytes": 256 * MiB}})
    assert "memory_bytes" in str(err) and "FOUNDRY_EXEC_MEMORY_BYTES" in str(err)
    assert err.result["limit"] == "memory_bytes" and "MemoryError" in err.result["stderr"]
    assert "allocated" not in err.result["stdout"]


async def test_cpu_limit() -> None:
    err = await run_failing({"code": "while True: pass", "limits": {"cpu_seconds": 1}})
    assert err.result["limit"] == "cpu_seconds" and "FOUNDRY_EXEC_CPU_SECONDS" in str(err)


async def test_file_size_limit() -> None:
    code = "open('big.bin', 'wb').write(b'x' * 1_000_000)"
    err = await run_failing({"code": code, "limits": {"file_bytes": 10_000}})
    assert err.result["limit"] == "file_bytes" and "FOUNDRY_EXEC_FILE_BYTES" in str(err)


async def test_process_limit() -> None:
    code = (
        "import os, time\n"
        "for _ in range(40):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "print('forked them all')\n"
    )
    err = await run_failing({"code": code, "limits": {"max_procs": 4}})
    assert err.result["limit"] == "max_procs" and "FOUNDRY_EXEC_MAX_PROCS" in str(err)
    assert "forked them all" not in err.result["stdout"]


async def test_output_cap_stops_a_chatty_program() -> None:
    # Given a program that prints forever and a 2000-byte output cap
    code = "while True:\n    print('y' * 99)"
    err = await run_failing({"code": code, "limits": {"output_bytes": 2000}})
    # Then it is stopped, its output kept up to the cap, and the limit named
    assert err.result["limit"] == "output_bytes" and "FOUNDRY_EXEC_OUTPUT_BYTES" in str(err)
    assert len(err.result["stdout"]) == 2000 and err.result["stdout_truncated"]
    assert err.result["stdout"].startswith("y" * 99 + "\n")


async def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given secrets in the worker's environment
    monkeypatch.setenv("FOUNDRY_LLM_API_KEY", "sk-very-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-very-secret")
    # When a program dumps its environment
    out = await run({"code": "import json, os\nprint(json.dumps(dict(os.environ)))"})
    env = json.loads(out["stdout"])
    # Then it sees only the sandbox's minimal variables
    assert not [k for k in env if k.startswith("FOUNDRY_")]
    assert "very-secret" not in out["stdout"]
    assert set(env) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PWD",
    }


async def test_nothing_of_a_run_stays_on_the_host() -> None:
    # Given a program that fills its folder, locks a subfolder and leaves a process behind
    before = sandbox_dirs()
    code = "mkdir -p deep/er && echo data > deep/er/file && chmod 000 deep\nsleep 30.5 &\npwd\n"
    out = await run({"language": "bash", "code": code})
    # Then it ran in the box's own work folder, nothing was made on the host, and the
    # background process ended with the box
    assert out["stdout"].strip() == "/sandbox" and out["isolation"] == "bwrap"
    assert sandbox_dirs() <= before
    await eventually(lambda: not _running("sleep", "30.5"), 10)


async def test_cancelled_run_is_killed_and_cleaned_up() -> None:
    # Given a long-running program whose task is cancelled (as a task timeout does)
    before = sandbox_dirs()
    task = asyncio.ensure_future(run({"language": "bash", "code": "sleep 31.25"}))
    await eventually(lambda: _running("sleep", "31.25"), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then the program is gone and its folder removed
    await eventually(lambda: not _running("sleep", "31.25"), 10)
    assert sandbox_dirs() <= before


async def test_input_limits_are_capped_by_settings() -> None:
    settings = Settings(exec=ExecSettings(timeout=5.0, output_bytes=4096))
    out = await run({"code": "pass", "limits": {"timeout": 9999, "output_bytes": 100}}, settings)
    assert out["limits"]["timeout"] == 5.0 and out["limits"]["output_bytes"] == 100


@pytest.mark.parametrize(
    ("task_input", "words"),
    [
        (None, "input.code"),
        ({"code": "  "}, "input.code"),
        ({"code": "x", "language": "ruby"}, "input.language"),
        ({"code": "x", "limits": {"gpu": 1}}, "unknown limit"),
        ({"code": "x", "limits": {"timeout": -1}}, "positive"),
        ({"code": "x", "limits": {"timeout": True}}, "positive"),
    ],
)
async def test_bad_input_fails_clearly(task_input: Any, words: str) -> None:
    err = await run_failing(task_input)
    assert words in str(err)


async def test_missing_interpreter_names_the_setting() -> None:
    err = await run_failing(
        {"code": "print(1)"}, Settings(exec=ExecSettings(python="no-such-python9"))
    )
    assert "FOUNDRY_EXEC_PYTHON" in str(err)


def _exists(path: Path) -> bool:
    return path.exists()


def _running(name: str, arg: str) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == name and arg in (proc.info["cmdline"] or []):
                return bool(proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            continue
    return False


async def test_code_runs_as_a_uid_other_than_the_workers() -> None:
    # When a program reports its uid
    out = await run({"language": "bash", "code": "id -u"})
    inside = int(out["stdout"].split()[0])
    # Then it is not the worker's: a uid of FOUNDRY_EXEC_UIDS for a root worker, else
    # "nobody" inside the box's user namespace
    assert inside != os.getuid()
    if os.geteuid() == 0:
        first, last = parse_range(Settings().exec.uids) or (0, 0)
        assert first <= inside <= last
    else:
        assert inside == pwd.getpwnam("nobody").pw_uid
