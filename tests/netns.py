"""Test hosts made of network namespaces: N hosts on a private /24, joined by a bridge.

Each host is a namespace ``fh-<run>-<i>`` with one interface (``eth0``, address
``10.213.<net>.<i+1>/24``); its veth peer sits on a bridge inside a namespace of
its own (``fh-<run>-sw``), so nothing is added to the machine's own network and
traffic stays on the namespaces' addresses. Processes run inside a host with
``ip netns exec`` (which execs, so the pid is the program's) and are stopped by
pid; Python code runs inside a host on a thread that entered its namespace
(:meth:`Host.run`). A host's link can be taken down and up. :meth:`Hosts.close`
stops the processes, then deletes the namespaces (the bridge goes with its own),
bounded in time, whatever happened before.

Needs root and iproute2 (``make test`` installs it where missing); elsewhere the
tests that use it skip saying why, and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IP_TIMEOUT = 10.0


def missing() -> str | None:
    """Why namespace hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespace hosts need root"
    if shutil.which("ip") is None:
        return "network namespace hosts need iproute2 (ip): apt-get install iproute2"
    probe = f"fh-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=IP_TIMEOUT)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=IP_TIMEOUT)
    return None


def require() -> None:
    """Skip (fail under CI=true) when namespace hosts cannot be made here."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, timeout=IP_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")


class _NetnsLoop(threading.Thread):
    """A thread inside a namespace running its own event loop: sockets made there are
    the namespace's (a network namespace is per thread)."""

    def __init__(self, netns: str) -> None:
        super().__init__(name=f"netns-{netns}", daemon=True)
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.netns} failed")
            finally:
                os.close(fd)
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def stop(self) -> None:
        if self.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.join(10)


class Host:
    """One namespace host: its name, address, processes and an event loop inside it."""

    def __init__(self, hosts: Hosts, index: int) -> None:
        self.hosts = hosts
        self.index = index
        self.netns = f"fh-{hosts.run}-{index}"
        self.address = f"{hosts.prefix}.{index + 1}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._loop: _NetnsLoop | None = None

    def spawn(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host (its own session); output goes to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def link(self, up: bool) -> None:
        """Take this host's link to the bridge down (it drops off the network) or up."""
        ip("-n", self.hosts.switch, "link", "set", f"s{self.index}", "up" if up else "down")

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this host's namespace thread and await its result here."""
        if self._loop is None:
            self._loop = _NetnsLoop(self.netns)
            self._loop.start()
            await asyncio.wrap_future(self._loop.ready)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop.loop)
        return await asyncio.wrap_future(future)

    def stop_processes(self, grace: float = 8.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)

    def close_loop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None


class Hosts:
    """``count`` namespace hosts on one bridge; use as a context manager."""

    def __init__(self, count: int) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.prefix = f"10.213.{random.randint(1, 254)}"
        self.switch = f"fh-{self.run}-sw"
        self.hosts = [Host(self, i) for i in range(count)]
        self._made: list[str] = []

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def open(self) -> Hosts:
        try:
            self._add(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for host in self.hosts:
                self._add(host.netns)
                ip("-n", host.netns, "link", "set", "lo", "up")
                port = f"s{host.index}"
                ip("-n", self.switch, "link", "add", port, "type", "veth",
                   "peer", "name", "eth0", "netns", host.netns)  # fmt: skip
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
                ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", host.netns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, netns: str) -> None:
        ip("netns", "add", netns)
        self._made.append(netns)

    def close(self) -> None:
        """Processes by pid, then the hosts' namespaces, then the bridge's; never raises."""
        for host in self.hosts:
            host.close_loop()
            with contextlib.suppress(Exception):
                host.stop_processes()
        for netns in reversed(self._made):  # the switch was made first: it goes last
            with contextlib.suppress(Exception):
                ip("netns", "del", netns)
        self._made.clear()

    def __enter__(self) -> Hosts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_log(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``text`` appears in the log at ``path`` (fails if the process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}; see {path}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} within {timeout}s")
