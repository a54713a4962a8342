"""Observability files checked as they are: Prometheus config and rules (promtool), dashboards,
Grafana provisioning, compose.yaml and the Dockerfile. No Docker engine is needed."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from foundry.settings import Settings
from tests import dashboards
from tests.prom import ALERTS_TEST_YML, ALERTS_YML, PROMETHEUS_YML, ROOT, require, with_credentials
from tests.test_compose import sourced

COMPOSE = ROOT / "compose.yaml"
PROVISIONING = ROOT / "grafana" / "provisioning"
OUR_SERVICES = {"gateway", "healer", "monitor"}
ONE_SHOT = {"init"}  # runs once before the others, then exits 0


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_promtool_accepts_config_and_rules(tmp_path: Path) -> None:
    # promtool wants the scrape token file to exist: point it at a stand-in
    token = tmp_path / "metrics.token"
    token.write_text("fdy_stand-in\n")
    text = with_credentials(yaml.safe_load(PROMETHEUS_YML.read_text()), token)
    text["rule_files"] = [str(ALERTS_YML)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(text))
    out = promtool("check", "config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    out = promtool("check", "rules", str(ALERTS_YML))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_unit_tests_pass_and_cover_the_key_alerts() -> None:
    # Given the promtool unit tests beside the rules
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST_YML.read_text()))
    assert {"FoundryWorkerSlotDown", "FoundryBacklogGrowing"} <= tested
    rules = yaml.safe_load(ALERTS_YML.read_text())
    defined = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert tested <= defined
    # Then they pass
    out = promtool("test", "rules", str(ALERTS_TEST_YML))
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_are_valid_grafana_json_on_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    boards = dashboards.load()
    assert set(boards) == {"cluster-overview.json", "tasks.json", "healer.json",
                           "nats-jetstream.json"}  # fmt: skip
    seen_uids = Counter(b["uid"] for b in boards.values())
    assert all(n == 1 for n in seen_uids.values()), seen_uids
    for name, board in boards.items():
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 30, name
        assert board["title"] and board["panels"], name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
        for ref in _datasource_refs(board):
            assert ref.get("type") == "prometheus" and ref.get("uid") in uids, (name, ref)
        for panel, target in dashboards.panel_queries(board):
            assert target.get("expr"), (name, panel["title"])
            dashboards.concrete(target["expr"])  # every variable is one Grafana knows
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, panel["title"])


def test_dashboards_are_what_the_builder_writes() -> None:
    build = dashboards.builder()
    built = {name: build.render(board) for name, board in build.build().items()}
    committed = {p.name: p.read_text() for p in dashboards.DASHBOARDS.glob("*.json")}
    assert built == committed, "run: python grafana/build_dashboards.py"


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "foundry.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(_bind_mounts(grafana))
    assert mounts.get(path) == "./grafana/dashboards"
    assert mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards.DASHBOARDS / Path(home).relative_to(path)).exists()


def test_compose_services_run_real_modules_on_the_configured_ports() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"nats", "redis", "prometheus", "grafana", *OUR_SERVICES} <= set(services)
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {t for job in scrape["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}  # fmt: skip
    for name, svc in services.items():
        for _, source in _bind_mounts(svc):
            assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
            continue
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy"
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"
        for _, source in _bind_mounts(svc):
            assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
    for name in OUR_SERVICES:
        svc = services[name]
        # Given the command (its role env file sourced first), a real module with a __main__
        module = sourced(svc["command"])["module"]
        assert (ROOT / module / "__main__.py").exists(), f"{name}: no module {module}"
        assert name == module
        # and the port this service listens on, read the way the service reads it
        env = {k: _interpolate(str(v)) for k, v in svc["environment"].items()}
        settings = Settings.from_env(env)
        port = getattr(settings, f"{name}_port")
        if name == "gateway":  # the healer and the monitor are reached on the internal network
            published = {_container_port(p) for p in svc.get("ports", [])}
            assert port in published, f"{name}: listens on {port}, publishes {published}"
        host = settings.monitor_host if name == "monitor" else settings.gateway_host
        assert host == "0.0.0.0", f"{name}: binds {host}, unreachable from other containers"
        assert f"{name}:{port}" in targets, f"prometheus.yml does not scrape {name}:{port}"
        check = svc["healthcheck"]["test"]
        assert check == ["CMD", "python", "-m", module, "--check"], check
    # The NATS monitoring endpoint the monitor reads is the one nats-server serves.
    nats_cmd = services["nats"]["command"]
    monitoring_port = nats_cmd[nats_cmd.index("-m") + 1]
    url = services["monitor"]["environment"]["FOUNDRY_NATS_MONITOR_URL"]
    assert _interpolate(url) == f"http://nats:{monitoring_port}"  # nats-1's in the cluster profile
    assert services["monitor"]["pid"] == "service:healer"
    assert services["monitor"]["hostname"] == services["healer"]["hostname"]


def test_dockerfile_installs_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "monitor" in packages
    for package in packages:
        assert re.search(rf"^COPY {package} {package}$", text, re.M), f"Dockerfile: {package}"


def _bind_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(container path, host path) of the service's bind mounts (host paths start with '.')."""
    out = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append((target, source))
    return out


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR:+alternative}`` as run from a shell that
    sets none of them."""
    return re.sub(
        r"\$\{\w+(?::?([-+])([^}]*))?\}",
        lambda m: m.group(2) if m.group(1) == "-" else "",
        text,
    )


def _container_port(mapping: str | int) -> int:
    return int(str(mapping).split(":")[-1].split("/")[0])


def _datasource_refs(node: Any) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                assert isinstance(value, dict), f"datasource by name, not uid: {value!r}"
                refs.append(value)
            else:
                refs.extend(_datasource_refs(value))
    elif isinstance(node, list):
        for item in node:
            refs.extend(_datasource_refs(item))
    return refs
