"""End to end through worker processes and the gateway: the docs example, the default bindings."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from foundry.settings import LlmSettings, WebhookSettings
from tests.fakes import MODEL, FakeLLM, WebhookReceiver, llm_app, serve, webhook_app
from tests.procs import ROOT, ProcessGroup
from tests.test_flow import submit, wait_task

DOC = ROOT / "docs" / "handlers.md"


def doc_block(name: str) -> str:
    """The fenced block that follows ``<!-- example: name -->`` in docs/handlers.md."""
    match = re.search(
        rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", DOC.read_text(), re.S
    )
    assert match, f"docs/handlers.md has no example block {name!r}"
    return match.group(1)


async def test_docs_example_runs_as_written(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given the module, the variables and the request exactly as docs/handlers.md shows them
    module = tmp_path / "shout.py"
    module.write_text(doc_block("shout.py"))
    run = doc_block("run")
    variables = dict(re.findall(r'(FOUNDRY_\w+)="([^"]*)"', run))
    fleet = dict(item.split("=") for item in variables["FOUNDRY_FLEET"].split(","))
    agent_type = next(iter(fleet))
    settings = make_settings(fleet={t: int(n) for t, n in fleet.items()}, handlers={})
    gw = await make_gateway(settings)
    # When a worker starts with them (PYTHONPATH holds the module's folder) ...
    procs.worker(
        settings,
        agent_type,
        FOUNDRY_HANDLERS=variables["FOUNDRY_HANDLERS"],
        PYTHONPATH=f"{tmp_path}:{ROOT}",
    )
    # ... and the documented request is submitted through the gateway
    request = doc_block("submit")
    assert "Authorization: Bearer $TOKEN" in request and "create" in run  # the token is shown
    body = json.loads(re.search(r"-d '(\{.*?\})'", request, re.S).group(1))  # type: ignore[union-attr]
    await submit(gw, **body)
    rec = await wait_task(gw, body["task_id"], wait=30)
    # Then the documented result comes back
    assert rec["status"] == "completed", procs.logs()
    assert rec["result"] == json.loads(doc_block("result"))
    # and the documented retry behaviour holds too
    await submit(gw, **{**body, "task_id": "shout-busy", "input": {"busy": True}})
    rec = await wait_task(gw, "shout-busy", wait=30)
    assert rec["status"] == "completed" and rec["result"]["attempt"] == 2, procs.logs()


async def test_builtin_roles_run_their_default_handlers(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given a fake LLM server, a webhook receiver and no FOUNDRY_HANDLERS at all
    llm, receiver = FakeLLM(), WebhookReceiver()
    async with serve(llm_app(llm)) as llm_url, serve(webhook_app(receiver)) as hook_url:
        settings = make_settings(
            handlers={},
            llm=LlmSettings(url=f"{llm_url}/v1", model="test-model", api_key="sk-e2e"),
            webhook=WebhookSettings(url=f"{hook_url}/deploy", secret="e2e-secret"),
        )
        gw = await make_gateway(settings)
        for agent_type in ("executor", "coder", "deployer"):
            procs.worker(settings, agent_type)
        # When each role gets a task
        await submit(
            gw,
            agent_type="executor",
            description="run it",
            task_id="e2e-exec",
            input={"code": "print(6 * 7)"},
        )
        await submit(gw, agent_type="coder", description="write fizzbuzz", task_id="e2e-llm")
        await submit(
            gw,
            agent_type="deployer",
            description="ship",
            task_id="e2e-hook",
            input={"version": "1.0"},
        )
        # Then the executor ran the code in the sandbox ...
        rec = await wait_task(gw, "e2e-exec", wait=30)
        assert rec["status"] == "completed", procs.logs()
        assert rec["result"]["stdout"] == "42\n" and rec["result"]["exit_code"] == 0
        # ... the coder asked the LLM (streaming) ...
        rec = await wait_task(gw, "e2e-llm", wait=30)
        assert rec["status"] == "completed", procs.logs()
        assert rec["result"]["content"] == llm.reply and rec["result"]["model"] == MODEL
        assert llm.requests[0]["headers"]["Authorization"] == "Bearer sk-e2e"
        # ... and the deployer called the webhook with a signed body
        rec = await wait_task(gw, "e2e-hook", wait=30)
        assert rec["status"] == "completed", procs.logs()
        assert rec["result"]["status"] == 200
        headers, raw = receiver.requests[0]
        digest = hmac.new(b"e2e-secret", raw, hashlib.sha256).hexdigest()
        assert headers["X-Foundry-Signature-256"] == f"sha256={digest}"
        assert json.loads(raw)["input"] == {"version": "1.0"}
    # and no secret reached the worker logs
    assert "sk-e2e" not in procs.logs() and "e2e-secret" not in procs.logs()


async def test_unconfigured_builtins_fail_saying_what_to_set(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given the default bindings with no LLM and no webhook configured
    settings = make_settings(handlers={})
    gw = await make_gateway(settings)
    procs.worker(settings, "architect")
    procs.worker(settings, "deployer")
    await submit(gw, agent_type="architect", description="design it", task_id="bare-llm")
    await submit(gw, agent_type="deployer", description="ship it", task_id="bare-hook")
    # Then each task fails with a message naming the variable to set
    rec = await wait_task(gw, "bare-llm", wait=30)
    assert rec["status"] == "failed" and "FOUNDRY_LLM_URL" in rec["error"], procs.logs()
    rec = await wait_task(gw, "bare-hook", wait=30)
    assert rec["status"] == "failed" and "FOUNDRY_DEPLOY_WEBHOOK_URL" in rec["error"]
