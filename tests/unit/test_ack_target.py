"""ack_target: (stream, consumer, stream sequence) from a JetStream ack subject, else None."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from foundry.names import Names
from healer.deadletter import ack_target

# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
NINE = "$JS.ACK.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000.0"
# $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>
#   .<timestamp>.<pending>.<random>
TWELVE = "$JS.ACK.hub.ACC8HASH.AGENT_TASKS.workers-coder.2.42.7.1700000000000000000.0.rNd"
ELEVEN = TWELVE.rsplit(".", 1)[0]


@pytest.mark.parametrize("reply", [NINE, TWELVE, ELEVEN])
def test_both_forms(reply: str) -> None:
    assert ack_target(reply) == ("AGENT_TASKS", "workers-coder", 42)


@pytest.mark.parametrize("reply", [NINE, TWELVE, ELEVEN])
def test_agrees_with_the_nats_client(reply: str) -> None:
    meta = Msg(_client=None, subject="agents.tasks.coder", reply=reply).metadata  # type: ignore[arg-type]
    assert ack_target(reply) == (meta.stream, meta.consumer, meta.sequence.stream)


def test_names_of_a_namespace() -> None:
    names = Names("team-a")
    reply = f"$JS.ACK.{names.tasks_stream}.{names.consumer('coder')}.3.9001.12.1700000000.4"
    assert ack_target(reply) == ("TEAM_A_AGENT_TASKS", "workers-coder", 9001)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "$JS",
        "$JS.ACK",
        "_INBOX.abc.def",
        "$JS.NAK.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000.0",
        "$js.ack.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000.0",
        "JS.ACK.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000.0",
        "$JS.ACK.AGENT_TASKS.workers-coder.1.42.7",  # 7 tokens
        "$JS.ACK.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000",  # 8 tokens
        NINE + ".extra",  # 10 tokens
        "$JS.ACK.AGENT_TASKS.workers-coder.1.x.7.1700000000000000000.0",
        "$JS.ACK.AGENT_TASKS.workers-coder.1.-42.7.1700000000000000000.0",
        "$JS.ACK.AGENT_TASKS.workers-coder.1.4 2.7.1700000000000000000.0",
        "$JS.ACK.AGENT_TASKS.workers-coder.1..7.1700000000000000000.0",
        "$JS.ACK.hub.ACC8HASH.AGENT_TASKS.workers-coder.2.x.7.1700000000000000000.0.rNd",
    ],
)
def test_garbage_is_none(reply: str) -> None:
    assert ack_target(reply) is None


def test_a_non_decimal_digit_is_none() -> None:
    assert ack_target("$JS.ACK.AGENT_TASKS.workers-coder.1.4².7.1700000000000000000.0") is None
