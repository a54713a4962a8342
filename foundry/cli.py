"""The ``foundry`` command: ``up`` (embedded all-in-one), ``status``, ``submit``, ``heal``, ``run``.

``foundry up`` uses nats-server / redis-server already answering at
FOUNDRY_NATS_URL / FOUNDRY_REDIS_URL, else starts embedded ones (data under
FOUNDRY_DATA_DIR), all supervised by one healer process which also launches the
gateway, the monitor and the fleet. One Ctrl-C drains and stops everything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from foundry import embedded as embedded_mod
from foundry.embedded import prepare as prepare_embedded
from foundry.errors import ConfigError
from foundry.secrets import read_env_file
from foundry.servers import port_open
from foundry.settings import Settings, split_urls

STOP_GRACE = 60.0
# What the HTTP commands read: the environment, over client.env when there is one.
_environ: Mapping[str, str] = os.environ


def client_environ(environ: Mapping[str, str], path: Path) -> dict[str, str]:
    """``environ`` over the ``KEY=value`` entries of ``path`` (explicit environment wins)."""
    base = read_env_file(path) if path.is_file() else {}
    return {**base, **environ}


def _gateway_url(settings: Settings) -> str:
    return _environ.get("FOUNDRY_GATEWAY_URL") or embedded_mod.gateway_url(settings)


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    token = _environ.get("FOUNDRY_API_TOKEN", "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise SystemExit(f"foundry: {exc.code} from the gateway: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(
            f"foundry: cannot reach the gateway at {url} ({exc}); is the cluster up (make up)?"
        ) from None


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(split_urls(url)[0])
    return port_open(parts.hostname or "127.0.0.1", parts.port or default_port, timeout=0.5)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    embedded: list[str] = [
        name
        for name, url, port in (
            ("nats", settings.nats_url, 4222),
            ("redis", settings.redis_url, 6379),
        )
        if not _answers(url, port)
    ]
    services = ["gateway"] + [
        name for name in ("monitor", "orchestrator") if importlib.util.find_spec(name)
    ]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "healer", "--services", ",".join(services)]
    if embedded:
        cmd += ["--embedded", ",".join(embedded)]
    for name in ("nats", "redis"):
        where = "embedded" if name in embedded else "already running"
        print(f"foundry: {name}: {where}", flush=True)
    try:
        settings = embedded_mod.prepare_api_token(prepare_embedded(settings, embedded))
    except ConfigError as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 2
    joining = f"; another host joins with {embedded_mod.cluster_env_path(settings)}"
    print(
        f"foundry: credentials: . {embedded_mod.client_env_path(settings)}  (API token, "
        f"nats CLI, foundry CLI){joining if embedded else ''}",
        flush=True,
    )
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.Popen(cmd, env=env)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            print("\nfoundry: stopping (draining workers)...", flush=True)
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    url = _gateway_url(settings)
    deadline = time.monotonic() + args.wait
    announced = False
    while proc.poll() is None:
        if not announced and not stopping:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        print(
                            f"foundry: cluster up; gateway at {url} (Ctrl-C stops it)", flush=True
                        )
                        announced = True
            except OSError:
                if time.monotonic() > deadline:
                    print(
                        f"foundry: gateway not healthy after {args.wait:g}s; see "
                        f"{settings.data_dir / 'logs'}",
                        flush=True,
                    )
                    announced = True
        try:
            proc.wait(0.5)
        except subprocess.TimeoutExpired:
            continue
    code = proc.returncode
    print(f"foundry: stopped (healer exit {code})", flush=True)
    return 0 if stopping and code == 0 else code or 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    url = _gateway_url(settings)
    status = _http("GET", f"{url}/api/cluster/status")
    agents = _http("GET", f"{url}/api/cluster/agents/live")["agents"]
    if args.json:
        print(json.dumps({"status": status, "agents": agents}, indent=2))
        return 0
    print(
        f"workers: {status['total_workers']} total, {status['healthy_workers']} healthy, "
        f"{status['unhealthy_workers']} unhealthy; healer {status.get('healer')}"
    )
    cols = (
        "worker_id",
        "agent_type",
        "status",
        "pid",
        "tasks_processed",
        "errors",
        "uptime_seconds",
    )
    rows = [[str(a.get(c, "")) for c in cols] for a in agents]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return 0


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    url = _gateway_url(settings)
    body: dict[str, Any] = {"agent_type": args.agent_type, "description": args.description}
    if args.input:
        try:
            body["input"] = json.loads(args.input)
        except ValueError as exc:
            raise SystemExit(f"foundry: --input is not JSON: {exc}") from None
    if args.task_id:
        body["task_id"] = args.task_id
    out = _http("POST", f"{url}/api/cluster/task/submit", body)
    if not args.wait:
        print(json.dumps(out))
        return 0
    record = _http(
        "GET",
        f"{url}/api/cluster/task/{out['task_id']}?wait={args.timeout:g}",
        timeout=args.timeout + 10,
    )
    print(json.dumps(record, indent=2))
    return 0 if record["status"] == "completed" else 1


def cmd_heal(settings: Settings, args: argparse.Namespace) -> int:
    out = _http("POST", f"{_gateway_url(settings)}/api/cluster/heal")
    print(out["message"])
    return 0


FOLLOW_EVERY = 1.0


def _step_line(run: dict[str, Any]) -> str:
    took = run.get("duration_seconds")
    timing = f" in {took:.1f}s" if isinstance(took, int | float) else ""
    why = f": {str(run['error'])[:200]}" if run.get("error") else ""
    who = run.get("agent_type") or "approval"
    return f"  {run['step']}.{run['round']} ({who}) {run['status']}{timing}{why}"


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    url = _gateway_url(settings)
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
    out = _http("POST", f"{url}/api/cluster/workflows", body)
    workflow_id = out["workflow_id"]
    if not args.follow:
        print(json.dumps(out))
        return 0
    print(f"workflow {workflow_id} ({args.workflow}) started", flush=True)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + args.timeout
    while True:
        state = _http("GET", f"{url}/api/cluster/workflows/{workflow_id}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the embedded all-in-one cluster")
    up.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the gateway")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="table of workers")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    sm = sub.add_parser("submit", help="submit a task through the gateway")
    sm.add_argument("agent_type")
    sm.add_argument("description")
    sm.add_argument("--input", help="JSON value for the task's input")
    sm.add_argument("--task-id")
    sm.add_argument("--wait", action="store_true", help="wait for the result")
    sm.add_argument("--timeout", type=float, default=60.0)
    sm.set_defaults(func=cmd_submit)
    heal = sub.add_parser("heal", help="relaunch anything dead or silent now")
    heal.set_defaults(func=cmd_heal)
    run = sub.add_parser("run", help="start a workflow through the gateway (e.g. build)")
    run.add_argument("workflow")
    run.add_argument("description", help="input.description")
    run.add_argument("--input", help="more input, a JSON object")
    run.add_argument("--id", help="the workflow id (a retried run with it starts one)")
    run.add_argument("--follow", action="store_true", help="print each step until it ends")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    global _environ
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command != "up":
            _environ = client_environ(os.environ, embedded_mod.client_env_path(settings))
            settings = Settings.from_env(_environ)
    except ConfigError as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 2
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
