"""Process supervision: launch slots, see exits at once, relaunch with backoff, quarantine.

Each child's exit is awaited by its own task (no polling interval). Children
are recorded in pid files under ``<data_dir>/run`` so a healer that restarts
replaces what an earlier healer left running instead of duplicating a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from foundry.childenv import inherited
from foundry.contracts import HealAction, RelaunchReason, SlotKind, SlotState, StopReason
from foundry.pidfiles import recorded_process, write_pidfile
from foundry.runtime import spawn
from healer.slots import Death, RestartPolicy, Slot
from healer.transitions import move

log = logging.getLogger(__name__)

Emit = Callable[..., Awaitable[None]]
DeathHook = Callable[[Slot, Death, RelaunchReason], Awaitable[None]]
LOG_TAIL_BYTES = 2000


def log_tail(path: Path | None, limit: int = LOG_TAIL_BYTES) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        return fh.read().decode("utf-8", "replace").strip()


class Supervisor:
    """Owns the child processes of every slot."""

    def __init__(self, run_dir: Path, policy: RestartPolicy, emit: Emit, kill_grace: float) -> None:
        self.run_dir = run_dir
        self.policy = policy
        self.emit = emit
        self.kill_grace = kill_grace
        self.slots: dict[str, Slot] = {}
        self.on_death: DeathHook | None = None
        self.shutting_down = False
        self.retiring: set[str] = set()  # worker slots being drained for good
        self._tasks: set[asyncio.Task[Any]] = set()
        run_dir.mkdir(parents=True, exist_ok=True)

    def add(self, slot: Slot) -> Slot:
        self.slots[slot.name] = slot
        return slot

    def by_kind(self, kind: SlotKind) -> list[Slot]:
        return [s for s in self.slots.values() if s.kind is kind]

    def heard(self, slot: Slot) -> None:
        """The slot's current process sent its first heartbeat: it is running."""
        if slot.state is SlotState.STARTING:
            move(slot, SlotState.RUNNING)

    # ---- pid files -------------------------------------------------------------------
    def _pidfile(self, slot: Slot) -> Path:
        return self.run_dir / f"{slot.name}.json"

    def replace_leftovers(self, extra: Iterable[str] = ()) -> list[int]:
        """Stop processes an earlier healer left running for our slots (verified by start time),
        and for the ``extra`` slot names it may have run (workers it had scaled out)."""
        stopped = []
        names = [*self.slots, *(name for name in extra if name not in self.slots)]
        for name in names:
            path = self.run_dir / f"{name}.json"
            if not path.exists():
                continue
            proc = recorded_process(path)
            if proc is not None:
                log.warning("replacing %s left by an earlier healer (pid %d)", name, proc.pid)
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
                    try:
                        proc.wait(self.kill_grace + 5)
                    except psutil.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
                stopped.append(proc.pid)
            path.unlink(missing_ok=True)
        return stopped

    # ---- launching -------------------------------------------------------------------
    async def launch(self, slot: Slot, reason: RelaunchReason | None = None, **fields: Any) -> None:
        """Start the slot's process; ``reason`` None is the first start (no event)."""
        alive = (SlotState.STARTING, SlotState.RUNNING, SlotState.STOPPING)
        if self.shutting_down or slot.state in alive:
            return  # never two copies of one slot
        slot.relaunch_handle = None
        old_pid = slot.pid
        env = {**inherited(os.environ), **slot.env}  # no FOUNDRY_* or secret-named variables
        log_file = open(slot.log_path, "ab") if slot.log_path else None  # noqa: ASYNC230
        try:
            proc = await asyncio.create_subprocess_exec(
                *slot.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            slot.last_error = f"cannot start {slot.command[0]}: {exc}"
            log.error("%s: %s", slot.name, slot.last_error)
            death = Death(time.monotonic(), None, None, 0.0)
            await self._died(slot, death, RelaunchReason.SPAWN_ERROR)
            return
        finally:
            if log_file:
                log_file.close()
        slot.proc, slot.pid = proc, proc.pid
        slot.launched_at = time.monotonic()
        slot.launches += 1
        move(slot, SlotState.STARTING if slot.is_worker else SlotState.RUNNING)
        slot.pending_reason = None
        write_pidfile(self._pidfile(slot), proc.pid)
        slot.waiter = spawn(self._wait(slot, proc), self._tasks)
        log.info("%s launched (pid %d, %s)", slot.name, proc.pid, reason or "start")
        if "died_at" in fields:
            fields["downtime_seconds"] = round(time.time() - float(fields["died_at"]), 6)
        if reason is not None:
            await self.emit(
                HealAction.RELAUNCH,
                slot=slot,
                reason=reason,
                old_pid=old_pid,
                new_pid=proc.pid,
                **fields,
            )

    async def _wait(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if slot.proc is not proc:
            return
        ran = slot.ran_for()
        sig = -code if code < 0 else None
        self._pidfile(slot).unlink(missing_ok=True)
        death = Death(time.monotonic(), code if code >= 0 else None, sig, ran)
        stopping = slot.state is SlotState.STOPPING
        if stopping and (self.shutting_down or slot.pending_reason is StopReason.STOP):
            move(slot, SlotState.STOPPED)
            return
        pending = slot.pending_reason
        reason = RelaunchReason(pending.value) if pending is not None else RelaunchReason.EXIT
        await self._died(slot, death, reason)

    async def _died(self, slot: Slot, death: Death, reason: RelaunchReason) -> None:
        move(slot, SlotState.BACKOFF)
        if reason in (RelaunchReason.EXIT, RelaunchReason.SPAWN_ERROR):
            tail = log_tail(slot.log_path)
            if tail and death.ran_for < self.policy.stable_after:
                slot.last_error = tail.splitlines()[-1][:500]
        log.warning(
            "%s died (%s, code=%s signal=%s after %.2fs)",
            slot.name,
            reason,
            death.exit_code,
            death.signal,
            death.ran_for,
        )
        if self.on_death is not None:
            try:  # nak in-flight, poison bookkeeping; the relaunch is scheduled whatever happens
                await self.on_death(slot, death, reason)
            except Exception:
                log.exception("%s: death bookkeeping failed; relaunching all the same", slot.name)
        if death.excused:
            slot.consecutive = 0
        else:
            if death.ran_for >= self.policy.stable_after:
                slot.consecutive = 0
            slot.consecutive += 1
            slot.deaths.append(death)
        if self.shutting_down:
            move(slot, SlotState.STOPPED)
            return
        now = time.monotonic()
        if slot.is_worker and self.policy.should_quarantine(slot.deaths, now):
            move(slot, SlotState.QUARANTINED)
            counted = len(self.policy.counted(slot.deaths, now))
            slot.quarantine_reason = (
                f"{counted} deaths within {self.policy.window:g}s (FOUNDRY_MAX_RESTARTS="
                f"{self.policy.max_restarts}); last: {_describe(death)}"
            )
            await self.emit(
                HealAction.QUARANTINE,
                slot=slot,
                reason=slot.quarantine_reason,
                restarts=counted,
                last_error=slot.last_error,
                exit_code=death.exit_code,
                signal=death.signal,
            )
            return
        delay = self.policy.delay(slot.consecutive)
        fields = {
            "exit_code": death.exit_code,
            "signal": death.signal,
            "backoff_seconds": delay,
            "ran_seconds": round(death.ran_for, 3),
            "died_at": time.time(),
            # how long the death took to notice: a silence for hung workers; an exit is
            # awaited, so it is seen at once
            "detect_seconds": (
                round(slot.silent_seconds or 0.0, 3) if reason is RelaunchReason.SILENT else 0.0
            ),
        }
        slot.silent_seconds = None
        self._schedule(slot, delay, reason, fields)

    def _schedule(
        self, slot: Slot, delay: float, reason: RelaunchReason, fields: dict[str, Any]
    ) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            spawn(self.launch(slot, reason, **fields), self._tasks)

        slot.relaunch_handle = loop.call_later(delay, fire) if delay > 0 else None
        if delay <= 0:
            fire()

    # ---- stopping --------------------------------------------------------------------
    async def terminate(self, slot: Slot, reason: StopReason, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace``; the exit handler decides what follows."""
        proc, waiter = slot.proc, slot.waiter  # the exit handler may relaunch: keep these
        if proc is None or proc.returncode is not None:
            return
        slot.pending_reason = reason
        move(slot, SlotState.STOPPING)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # also ends a SIGSTOPped process
            await proc.wait()
        if waiter is not None:  # let the exit handler finish (events, relaunch scheduling)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(waiter), 5)

    # ---- scaling ---------------------------------------------------------------------
    async def grow(self, slot: Slot) -> None:
        """Add a worker slot the fleet did not start with, and launch it."""
        if slot.name in self.slots:
            raise ValueError(f"slot {slot.name} exists already")
        self.add(slot)
        await self.launch(slot)

    async def retire(self, slot: Slot, grace: float) -> bool:
        """Drain a running worker slot like a shutdown of that slot, then remove it for good.

        SIGTERM lets it finish what it holds (SIGKILL after ``grace``); it is never
        relaunched. False when the slot is not a running worker or the healer is stopping.
        """
        if (
            not slot.is_worker
            or slot.state is not SlotState.RUNNING
            or self.shutting_down
            or slot.name in self.retiring
        ):
            return False
        self.retiring.add(slot.name)
        try:
            await self.terminate(slot, StopReason.STOP, grace)
        finally:
            self.retiring.discard(slot.name)
        if slot.proc is not None and slot.proc.returncode is None:
            return False  # still running (it cannot be: terminate kills it); keep the slot
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
        self._pidfile(slot).unlink(missing_ok=True)
        log.info("%s retired (pid %s)", slot.name, slot.pid)
        return True

    async def release(self, slot: Slot) -> bool:
        if slot.state is not SlotState.QUARANTINED:
            return False
        slot.deaths.clear()
        slot.consecutive = 0
        slot.quarantine_reason = None
        move(slot, SlotState.STOPPED)
        await self.emit(HealAction.RELEASE, slot=slot, reason="operator release")
        await self.launch(slot, RelaunchReason.RELEASE)
        return True

    async def relaunch_waiting(self) -> list[Slot]:
        """Relaunch every slot that is waiting out a backoff, now."""
        out = []
        for slot in self.slots.values():
            if slot.state is SlotState.BACKOFF and slot.relaunch_handle is not None:
                slot.relaunch_handle.cancel()
                move(slot, SlotState.STOPPED)
                await self.launch(slot, RelaunchReason.MANUAL)
                out.append(slot)
        return out

    async def shutdown(self, worker_grace: float) -> None:
        """Workers first (they drain), then services, then embedded servers."""
        self.shutting_down = True
        for slot in self.slots.values():
            if slot.relaunch_handle is not None:
                slot.relaunch_handle.cancel()
        kinds = ((SlotKind.WORKER, worker_grace), (SlotKind.SERVICE, 10.0), (SlotKind.SERVER, 10.0))
        for kind, grace in kinds:
            stops = (self.terminate(s, StopReason.STOP, grace) for s in self.by_kind(kind))
            await asyncio.gather(*stops)
        for task in list(self._tasks):
            task.cancel()


def _describe(death: Death) -> str:
    if death.signal:
        return f"killed by signal {signal.Signals(death.signal).name} after {death.ran_for:.2f}s"
    return f"exit code {death.exit_code} after {death.ran_for:.2f}s"
