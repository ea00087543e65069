"""A node's partition comes from the deployment's registration when it has one: a claim in the payload that
disagrees is refused, so a member node cannot take another's partition (identity from Flower's metadata)."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.node_partitions import NODE_PARTITIONS_KEY, encode_node_partitions, node_partitions
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config

NODES = [1000 + 7 * p for p in range(4)]  # LoopbackGrid gives partition p the node id 1000 + 7 p


def test_the_run_config_value_round_trips_and_bad_values_are_refused() -> None:
    assert node_partitions({}, 4) is None and node_partitions({NODE_PARTITIONS_KEY: ""}, 4) is None
    text = encode_node_partitions(NODES)
    assert text == "1000,1007,1014,1021"
    assert node_partitions({NODE_PARTITIONS_KEY: text}, 4) == {1000: 0, 1007: 1, 1014: 2, 1021: 3}
    for bad, reason in (
        ("1000,1007,1014", "must list 4 node ids"),
        ("1000,1007,1014,x", "must list 4 node ids"),
        ("1000,1007,1014,-5", "must list 4 node ids"),
        ("\u00b2,1007,1014,1021", "must list 4 node ids"),  # a digit to isdigit(), not to int()
        ("1000,1007,1014,1000", "names one node twice"),
    ):
        with pytest.raises(ConfigError, match=reason):
            node_partitions({NODE_PARTITIONS_KEY: bad}, 4)


def _impostor(message: Message, reply: Message) -> list[Message]:
    """Partition 0's node says hello as partition 3 (its node id sorts first, so it would be taken first)."""
    if message.metadata.message_type == "query" and message.metadata.dst_node_id == NODES[0]:
        return [Message(RecordDict({kd.METRICS: MetricRecord({kd.PARTITION_ID: 3})}), reply_to=message)]
    return [reply]


@pytest.mark.parametrize("pinned", [False, True])
def test_a_claim_the_registration_contradicts_is_refused(pinned: bool, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config()
    strategy = make_strategy(cfg, node_partitions=dict(zip(NODES, range(4), strict=True)) if pinned else None)
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()}, _impostor)
    with caplog.at_level("WARNING", logger="flwr"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
    found = {node: strategy.partition_of(node) for node in NODES}
    if pinned:  # the impostor is left out and the node registered for partition 3 holds it
        assert found == {1000: None, 1007: 1, 1014: 2, 1021: 3}
        assert "Node 1000 claims partition 3, but the deployment registered it for partition 0" in caplog.text
    else:  # what pinning prevents: the impostor takes partition 3 and its owner is left out
        assert found == {1000: 3, 1007: 1, 1014: 2, 1021: None}


def _two_claims(message: Message, reply: Message) -> list[Message]:
    """Partition 0's node says hello twice: as itself and as partition 3."""
    if message.metadata.message_type == "query" and message.metadata.dst_node_id == NODES[0]:
        return [reply, Message(RecordDict({kd.METRICS: MetricRecord({kd.PARTITION_ID: 3})}), reply_to=message)]
    return [reply]


def test_a_node_that_answers_discovery_twice_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """Of two claims neither is believed: the node holds no partition (the first claim used to win, while the log
    said it was left out), and partition 3's own node still holds partition 3."""
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()}, _two_claims)
    with caplog.at_level("WARNING", logger="flwr"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
    assert {node: strategy.partition_of(node) for node in NODES} == {1000: None, 1007: 1, 1014: 2, 1021: 3}
    assert "Node 1000 answered discovery 2 times; it is left out" in caplog.text
