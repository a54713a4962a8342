"""The OpenAPI document against the router it describes (no servers needed)."""

from __future__ import annotations

import re
from typing import Any

from foundry.contracts import TASK_ID_RE
from foundry.names import AGENT_TYPE_RE
from foundry.settings import Settings
from gateway.app import create_app
from gateway.keys import OPENAPI
from gateway.routes import ROUTES


def _app_and_doc(**overrides: Any) -> tuple[Any, dict[str, Any]]:
    app = create_app(Settings(fleet={"coder": 1, "executor": 2}, **overrides))
    return app, app[OPENAPI]


def test_every_registered_route_is_documented_and_nothing_else() -> None:
    app, doc = _app_and_doc()
    registered = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert registered == documented
    # and each path parameter of a pattern is declared, with a pattern of its own
    for path, ops in doc["paths"].items():
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path


def test_each_operation_declares_its_scope_and_the_bearer_scheme() -> None:
    _, doc = _app_and_doc()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        if route.scope is None:
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearer": [route.scope]}]
            assert op["x-required-scope"] == route.scope
            assert {"401", "403", "421"} <= set(op["responses"])
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]


def test_constraints_the_handlers_enforce_are_declared() -> None:
    _, doc = _app_and_doc(gateway_max_wait=7.5)
    params = {
        (path, p["name"]): p["schema"]
        for path, ops in doc["paths"].items()
        for op in ops.values()
        for p in op.get("parameters", [])
    }
    history = "/api/cluster/heal/history"
    assert params[(history, "limit")] == {"type": "integer", "minimum": 1, "maximum": 1000,
                                          "default": 50}  # fmt: skip
    assert params[(history, "offset")]["minimum"] == 0
    task = "/api/cluster/task/{task_id}"
    task_id_pattern = params[(task, "task_id")]["pattern"]
    assert task_id_pattern.endswith(TASK_ID_RE.pattern[1:])
    assert re.search(task_id_pattern, "seq-17") and not re.search(task_id_pattern, "submit")
    assert params[(task, "wait")]["maximum"] == 7.5 and params[(task, "wait")]["minimum"] == 0
    release = "/api/cluster/workers/{worker_id}/release"
    assert re.fullmatch(params[(release, "worker_id")]["pattern"], "coder-0")
    body = doc["paths"]["/api/cluster/task/submit"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["properties"]["agent_type"]["enum"] == ["coder", "executor"]
    assert all(AGENT_TYPE_RE.fullmatch(t) for t in schema["properties"]["agent_type"]["enum"])
    assert schema["additionalProperties"] is False
    task_id = re.compile(schema["properties"]["task_id"]["pattern"])
    assert task_id.search("calc-1") and not task_id.search("seq-17")
    assert not task_id.search("bad id")
