"""``FOUNDRY_EXEC_ISOLATION=none`` (rlimits only, said loudly), and checks that need no sandbox."""

from __future__ import annotations

import logging
import os
import pwd
import tempfile
from pathlib import Path

import psutil
import pytest

from foundry.errors import ConfigError
from foundry.settings import ExecSettings, Settings
from tests.conftest import eventually
from tests.fakes import make_ctx
from workers.builtin.exec import ExecHandler
from workers.builtin.uidpool import UidPool
from workers.handlers import TaskFailed

NONE = Settings(exec=ExecSettings(isolation="none"))


async def test_none_warns_at_start_and_runs_in_a_temp_folder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker whose operator chose no isolation
    handler = ExecHandler()
    caplog.set_level(logging.WARNING)
    await handler.setup(NONE)
    # Then its start says so
    assert "FOUNDRY_EXEC_ISOLATION=none" in caplog.text and "WITHOUT isolation" in caplog.text
    # When code runs, it runs in a temporary folder, removed afterwards with its stragglers
    code = "mkdir -p deep/er && echo data > deep/er/file && chmod 000 deep\nsleep 30.25 &\npwd\n"
    out = await handler(make_ctx("executor", {"language": "bash", "code": code}, NONE))
    workdir = Path(out["stdout"].strip())
    assert out["isolation"] == "none" and workdir.name.startswith("foundry-exec-")
    assert workdir.parent == Path(tempfile.gettempdir()) and not _exists(workdir)
    await eventually(lambda: not _running("sleep", "30.25"), 10)


async def test_none_runs_a_root_workers_code_as_the_exec_user() -> None:
    out = await ExecHandler()(make_ctx("executor", {"code": "import os; print(os.getuid())"}, NONE))
    expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.getuid()
    assert int(out["stdout"]) == expected


async def test_bad_isolation_settings_name_the_variable() -> None:
    for env, var in (
        ({"FOUNDRY_EXEC_ISOLATION": "chroot"}, "FOUNDRY_EXEC_ISOLATION"),
        ({"FOUNDRY_EXEC_UIDS": "0-10"}, "FOUNDRY_EXEC_UIDS"),
        ({"FOUNDRY_EXEC_UIDS": "a lot"}, "FOUNDRY_EXEC_UIDS"),
        ({"FOUNDRY_EXEC_TMP_BYTES": "big"}, "FOUNDRY_EXEC_TMP_BYTES"),
        ({"FOUNDRY_LLM_MAX_TOKENS": "0"}, "FOUNDRY_LLM_MAX_TOKENS"),
        ({"FOUNDRY_LLM_ALLOW_SYSTEM": "maybe"}, "FOUNDRY_LLM_ALLOW_SYSTEM"),
        ({"FOUNDRY_HANDLER_SECRETS": "reviewer"}, "FOUNDRY_HANDLER_SECRETS"),
        ({"FOUNDRY_HANDLER_SECRETS": "Bad.Type=X"}, "FOUNDRY_HANDLER_SECRETS"),
    ):
        with pytest.raises(ConfigError) as info:
            Settings.from_env(env)
        assert var in str(info.value)
    assert Settings.from_env({"FOUNDRY_LLM_MODELS": "a, b,,c"}).llm.models == ("a", "b", "c")


def test_uid_leases_are_exclusive_across_holders(tmp_path: Path) -> None:
    # Given a pool of two uids, two leases take both, a third finds none
    lock_dir = tmp_path / "locks"
    first, second = UidPool(61000, 61001, lock_dir), UidPool(61000, 61001, lock_dir)
    first.check()
    a, b = first.acquire(), second.acquire()
    assert a is not None and b is not None and a[0] != b[0]
    assert first.acquire() is None
    # When a holder lets go (or dies: the kernel drops its lock), the uid is free again
    os.close(a[1])
    c = second.acquire()
    assert c is not None and c[0] == a[0]
    for fd in (b[1], c[1]):
        os.close(fd)


def test_an_open_lock_folder_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "open"
    lock_dir.mkdir(mode=0o777)
    lock_dir.chmod(0o777)
    with pytest.raises(OSError, match="open to other users"):
        UidPool(61000, 61001, lock_dir).check()


async def test_bad_network_input_fails_clearly() -> None:
    with pytest.raises(TaskFailed) as info:
        await ExecHandler()(make_ctx("executor", {"code": "x", "network": "yes"}, NONE))
    assert "input.network" in str(info.value)


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
