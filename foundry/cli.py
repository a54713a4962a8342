"""The ``foundry`` command: ``up`` (embedded all-in-one), ``status``, ``submit``, ``heal``,
``cancel``, ``dead`` (list dead letters), ``replay`` and ``run`` (a workflow).

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
from foundry.clihttp import gateway_call as _http
from foundry.cliops import cmd_cancel, cmd_dead, cmd_replay, cmd_run, follow
from foundry.embedded import prepare as prepare_embedded
from foundry.errors import ConfigError
from foundry.secrets import read_env_file
from foundry.servers import port_open
from foundry.settings import Settings, split_urls
from foundry.urls import is_sentinel_url

STOP_GRACE = 60.0


def client_environ(environ: Mapping[str, str], path: Path) -> dict[str, str]:
    """``environ`` over the ``KEY=value`` entries of ``path`` (explicit environment wins)."""
    base = read_env_file(path) if path.is_file() else {}
    return {**base, **environ}


def _answers(url: str, default_port: int) -> bool:
    """Whether any of the listed servers answers (Sentinels name servers never embedded)."""
    if is_sentinel_url(url):
        return True
    for one in split_urls(url):
        parts = urlsplit(one)
        if port_open(parts.hostname or "127.0.0.1", parts.port or default_port, timeout=0.5):
            return True
    return False


def page_url(settings: Settings, url: str) -> str:
    """The status page's address, with client.env's API token in the fragment: a browser
    never sends a fragment to the server, and the page moves it to session storage."""
    path = embedded_mod.client_env_path(settings)
    token = read_env_file(path).get("FOUNDRY_API_TOKEN", "") if path.is_file() else ""
    return f"{url}/#token={token}" if token else f"{url}/"


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    servers = (("nats", settings.nats_url, 4222), ("redis", settings.redis_url, 6379))
    embedded: list[str] = [name for name, url, port in servers if not _answers(url, port)]
    if args.env_file and embedded:
        # A joining host uses the cluster's servers: an empty embedded one would split it.
        var = {"nats": "FOUNDRY_NATS_URL", "redis": "FOUNDRY_REDIS_URL"}[embedded[0]]
        print(
            f"foundry: joining with {args.env_file}: {var} does not answer; set it to an "
            "address of the cluster this host can reach",
            file=sys.stderr,
        )
        return 2
    if args.env_file:
        print(f"foundry: joining the cluster of {args.env_file} as host {settings.host_id}")
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
    url = settings.gateway_base_url
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
                        print(f"foundry: status page: {page_url(settings, url)}", flush=True)
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


STATUS_COLUMNS = (
    "worker_id",
    "agent_type",
    "status",
    "pid",
    "tasks_processed",
    "errors",
    "uptime_seconds",
)


def status_lines(status: dict[str, Any], agents: list[dict[str, Any]]) -> list[str]:
    """The ``foundry status`` table: cluster totals, then each host's workers under it."""
    lines = [
        f"workers: {status['total_workers']} total, {status['healthy_workers']} healthy, "
        f"{status['unhealthy_workers']} unhealthy; healer {status.get('healer')}"
    ]
    hosts: dict[str, dict[str, Any]] = status.get("hosts") or {}
    rows = [[str(a.get(c, "")) for c in STATUS_COLUMNS] for a in agents]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(STATUS_COLUMNS)]
    groups: dict[str, list[list[str]]] = {}
    for agent, row in zip(agents, rows, strict=True):
        groups.setdefault(str(agent.get("host") or "-"), []).append(row)
    for host in sorted(set(groups) | set(hosts)):
        info = hosts.get(host, {})
        lead = ", leader" if info.get("leader") else ""
        lines.append("")
        lines.append(
            f"host {host}: {info.get('total_workers', len(groups.get(host, [])))} worker(s), "
            f"{info.get('healthy_workers', 0)} healthy; healer {info.get('healer', '?')}{lead}"
        )
        lines.append(
            "  "
            + "  ".join(c.upper().ljust(w) for c, w in zip(STATUS_COLUMNS, widths, strict=True))
        )
        for row in groups.get(host, []):
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return lines


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = _http(settings, "GET", "/api/cluster/status")
    agents = _http(settings, "GET", "/api/cluster/agents/live")["agents"]
    if args.json:
        print(json.dumps({"status": status, "agents": agents}, indent=2))
        return 0
    print("\n".join(status_lines(status, agents)))
    return 0


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"agent_type": args.agent_type, "description": args.description}
    if args.input:
        try:
            body["input"] = json.loads(args.input)
        except ValueError as exc:
            raise SystemExit(f"foundry: --input is not JSON: {exc}") from None
    if args.task_id:
        body["task_id"] = args.task_id
    out = _http(settings, "POST", "/api/cluster/task/submit", body)
    if args.follow:
        return follow(settings, out["task_id"], args.timeout)
    if not args.wait:
        print(json.dumps(out))
        return 0
    record = _http(
        settings,
        "GET",
        f"/api/cluster/task/{out['task_id']}?wait={args.timeout:g}",
        timeout=args.timeout + 10,
    )
    print(json.dumps(record, indent=2))
    return 0 if record["status"] == "completed" else 1


def cmd_heal(settings: Settings, args: argparse.Namespace) -> int:
    out = _http(settings, "POST", "/api/cluster/heal")
    print(out["message"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the embedded all-in-one cluster")
    up.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the gateway")
    up.add_argument(
        "--env-file",
        type=Path,
        help="join a cluster: read its cluster.env (as if sourced) and embed no server",
    )
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
    sm.add_argument(
        "--follow",
        action="store_true",
        help="print the task's output as it streams, then the result",
    )
    sm.add_argument("--timeout", type=float, default=60.0)
    sm.set_defaults(func=cmd_submit)
    heal = sub.add_parser("heal", help="relaunch anything dead or silent now")
    heal.set_defaults(func=cmd_heal)
    cancel = sub.add_parser("cancel", help="cancel a task (queued: at once; running: stopped)")
    cancel.add_argument("task_id")
    cancel.set_defaults(func=cmd_cancel)
    dead = sub.add_parser("dead", help="list dead letters, newest first")
    replay = sub.add_parser("replay", help="run dead letters again as <task_id>.replay-<n>")
    replay.add_argument("task_id", nargs="?", help="the dead task to replay")
    replay.add_argument("--all", action="store_true", help="every matching letter not replayed")
    replay.add_argument("--dry-run", action="store_true", help="count them, change nothing")
    for p in (dead, replay):
        p.add_argument("--type", help="only this agent type")
        p.add_argument("--reason", help="only letters whose reason contains this text")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=cmd_dead)
    replay.set_defaults(func=cmd_replay)
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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up" and args.env_file:
            if not args.env_file.is_file():
                print(f"foundry: --env-file: no such file {args.env_file}", file=sys.stderr)
                return 2
            settings = Settings.from_env({**os.environ, **read_env_file(args.env_file)})
        else:
            settings = Settings.from_env()
        if args.command != "up":
            # the HTTP commands read client.env too (the explicit environment wins)
            environ = client_environ(os.environ, embedded_mod.client_env_path(settings))
            settings = Settings.from_env(environ)
    except ConfigError as exc:
        print(f"foundry: {exc}", file=sys.stderr)
        return 2
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
