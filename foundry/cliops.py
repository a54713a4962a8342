"""CLI commands that act on tasks, dead letters and workflows through the gateway:
``cancel``, ``dead``, ``replay``, ``run``, and following a task's output."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from foundry.clihttp import gateway_call as _http
from foundry.clihttp import headers as _headers
from foundry.settings import Settings


def _sse(resp: Any) -> Any:
    """(event, id, data) for each frame of a text/event-stream response."""
    event, ident, data = "message", None, ""
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and data:
            yield event, ident, json.loads(data)
            event, ident, data = "message", None, ""


def follow(settings: Settings, task_id: str, timeout: float) -> int:
    """Print a task's output as it streams (stdout; stderr chunks to stderr), then its record.

    A chunk of a later attempt voids what the earlier one printed: a note says so.
    """
    stream_url = f"{settings.gateway_base_url}/api/cluster/task/{task_id}/stream"
    deadline = time.monotonic() + timeout
    last_id: str | None = None
    attempt = 0
    while time.monotonic() < deadline:
        headers = {**_headers(settings), "Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        req = urllib.request.Request(stream_url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())) as resp:
                for event, ident, data in _sse(resp):
                    if event == "output":
                        last_id = ident
                        if data["attempt"] != attempt:
                            if attempt:
                                print(
                                    f"\nfoundry: attempt {data['attempt']} (the output "
                                    f"above, of attempt {attempt}, is void)",
                                    file=sys.stderr,
                                )
                            attempt = data["attempt"]
                        out = sys.stderr if data["stream"] == "stderr" else sys.stdout
                        out.write(data["data"])
                        out.flush()
                    elif event == "end":
                        print(json.dumps(data, indent=2))
                        return 0 if data["status"] == "completed" else 1
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"foundry: {exc.code} from the gateway following {task_id}") from None
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                break
            print(f"foundry: stream interrupted ({exc}); reconnecting", file=sys.stderr)
            time.sleep(0.5)
    print(f"foundry: task {task_id} not finished within {timeout:g}s", file=sys.stderr)
    return 1


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    task_id = quote(args.task_id, safe="")
    out = _http(settings, "POST", f"/api/cluster/task/{task_id}/cancel")
    print(f"{out['task_id']}: {out['status']}{' (already)' if out.get('already') else ''}")
    return 0


def _filters(args: argparse.Namespace) -> dict[str, str]:
    pairs = {"agent_type": args.type, "reason": args.reason}
    return {k: v for k, v in pairs.items() if v}


def cmd_dead(settings: Settings, args: argparse.Namespace) -> int:
    query = urlencode({**_filters(args), "limit": args.limit})
    out = _http(settings, "GET", f"/api/cluster/dead?{query}")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    cols = ("task_id", "agent_type", "action", "dead_at", "replayed_as", "reason")
    rows = [
        [str(d[c]) if c != "dead_at" else time.strftime("%Y-%m-%d %H:%M:%S",
                                                         time.localtime(d[c]))
         for c in cols]
        for d in out["dead_letters"]
    ]  # fmt: skip
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    more = " (scan truncated)" if out["truncated"] else ""
    print(f"{out['count']} shown of {out['total']} matching{more}")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    if args.task_id and (args.all or args.type or args.reason or args.dry_run):
        raise SystemExit("foundry: replay takes a task id, or --all with filters; not both")
    if args.task_id:
        one = _http(settings, "POST", f"/api/cluster/dead/{quote(args.task_id, safe='')}/replay")
        print(f"{one['task_id']} replayed as {one['new_task_id']}")
        return 0
    if not args.all:
        raise SystemExit("foundry: replay needs a task id, or --all (with --type/--reason)")
    query = urlencode({**_filters(args), **({"dry_run": 1} if args.dry_run else {})})
    out = _http(settings, "POST", f"/api/cluster/dead/replay?{query}", timeout=60)
    for letter in out["letters"]:
        print(f"{letter['task_id']} -> {letter.get('new_task_id', '(dry run)')}")
    verb = "would replay" if out["dry_run"] else "replayed"
    tail = "; more match: run it again" if out["more"] else ""
    print(f"{verb} {out['count']}; {out['already_replayed']} replayed before{tail}")
    return 0


FOLLOW_EVERY = 1.0


def _step_line(run: dict[str, Any]) -> str:
    took = run.get("duration_seconds")
    timing = f" in {took:.1f}s" if isinstance(took, int | float) else ""
    why = f": {str(run['error'])[:200]}" if run.get("error") else ""
    who = run.get("agent_type") or "approval"
    return f"  {run['step']}.{run['round']} ({who}) {run['status']}{timing}{why}"


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.gateway_base_url
    task_input: dict[str, Any] = {}
    if args.input:
        try:
            task_input = json.loads(args.input)
        except ValueError as exc:
            raise SystemExit(f"foundry: --input is not JSON: {exc}") from None
        if not isinstance(task_input, dict):
            raise SystemExit("foundry: --input must be a JSON object")
    task_input = {"description": args.description, **task_input}
    body: dict[str, Any] = {"workflow": args.workflow, "input": task_input}
    if args.id:
        body["workflow_id"] = args.id
    out = _http(settings, "POST", "/api/cluster/workflows", body)
    workflow_id = out["workflow_id"]
    if not args.follow:
        print(json.dumps(out))
        return 0
    print(f"workflow {workflow_id} ({args.workflow}) started", flush=True)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + args.timeout
    while True:
        state = _http(settings, "GET", f"/api/cluster/workflows/{workflow_id}")
        for run in state["steps"]:
            key = f"{run['step']}.{run['round']}"
            if seen.get(key) != run["status"]:
                seen[key] = run["status"]
                print(_step_line(run), flush=True)
        status = state["status"]
        if status in ("completed", "failed", "cancelled"):
            error = f": {state['error']}" if state.get("error") else ""
            print(f"workflow {workflow_id} {status} after {state['round']} round(s){error}")
            return 0 if status == "completed" else 1
        if status == "waiting_approval" and "approval" not in seen.values():
            seen["approval"] = "approval"
            print(f"  waiting for approval: POST {url}/api/cluster/workflows/{workflow_id}"
                  "/approve (scope operate)", flush=True)  # fmt: skip
        if time.monotonic() > deadline:
            print(f"foundry: still {status} after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(FOLLOW_EVERY)
