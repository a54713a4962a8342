"""A headless Chromium started by pid and driven over the DevTools protocol (CDP).

:func:`chromium` starts ``/usr/bin/chromium`` (or ``FOUNDRY_TEST_CHROMIUM``) headless with
a fresh profile on a loopback DevTools port and stops it by pid; :class:`Page` is one tab:
navigate, evaluate JavaScript, wait for a condition, take a screenshot. Exceptions the
page throws are collected in ``Page.errors``. Where Chromium is missing the test skips
naming what to install, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)  # fmt: skip
START_TIMEOUT = 30.0


def chromium_binary() -> str:
    """Chromium's path, or skip (fail under CI=true) saying how to get it."""
    wanted = os.environ.get("FOUNDRY_TEST_CHROMIUM", "/usr/bin/chromium")
    found = shutil.which(wanted)
    if found:
        return found
    why = f"{wanted} is missing: make test installs Debian's chromium (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


class Page:
    """One tab, over its own DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(message.data)
            if "id" in body:
                fut = self._waiting.pop(body["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(body)
            elif body.get("method") == "Runtime.exceptionThrown":
                details = body["params"]["exceptionDetails"]
                self.errors.append(str(details.get("exception", {}).get("description", details)))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        body = await asyncio.wait_for(fut, timeout)
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        result: dict[str, Any] = body.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        out = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in out:
            raise RuntimeError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, interval: float = 0.05) -> Any:
        """Evaluate until truthy; the value, or AssertionError naming the expression."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s: {expression}")
            await asyncio.sleep(interval)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", 15)

    async def screenshot(self, path: Path) -> None:
        out = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(out["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} at start")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        time.sleep(0.05)
    raise RuntimeError(f"chromium wrote no DevTools port within {START_TIMEOUT}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to Chromium's process group (the one it was started in), SIGKILL if it stays."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def _launch(binary: str, profile: Path, width: int, height: int) -> subprocess.Popen[bytes]:
    with open(profile / "chromium.log", "wb") as log:
        return subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,  # its helpers share the group, stopped with it
        )  # fmt: skip


@contextlib.asynccontextmanager
async def chromium(width: int = 1400, height: int = 1000) -> AsyncIterator[Page]:
    """A fresh headless Chromium with one tab; stopped by pid afterwards."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(
        prefix="foundry-chromium-", ignore_cleanup_errors=True
    ) as folder:
        profile = Path(folder)
        proc = _launch(binary, profile, width, height)
        try:
            port = await asyncio.to_thread(_devtools_port, profile, proc)
            async with aiohttp.ClientSession() as http:
                async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
                    target = await resp.json(content_type=None)
                ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
                page = Page(ws)
                try:
                    await page.send("Page.enable")
                    await page.send("Runtime.enable")
                    await page.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=width, height=height, deviceScaleFactor=1, mobile=False,
                    )  # fmt: skip
                    yield page
                finally:
                    await page.close()
        finally:
            _stop(proc)
