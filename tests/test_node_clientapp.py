"""The ClientApp reads its node config: a deployed node trains on its own data folder (or its partition of the named
public dataset) and the federation ends exactly where the simulated one does; a bad node config is an error reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from fl_kd.clients.kd_app import app as client_app
from fl_kd.kd.protocol import RUN_CONFIG_KEY
from fl_kd.kd.round_policy import RoundPolicy
from fl_kd.simulations.node_data import dataset_node_configs, write_partition_folders
from fl_kd.strategies.kd_app import make_strategy
from fl_kd.strategies.kd_rounds import run_rounds
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config


def _history(tmp_path: Path, node_configs: list[dict[str, str | int]] | None) -> list[dict]:
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, node_configs=node_configs)
    run_rounds(strategy, grid, cfg.strategy.rounds, RoundPolicy(), tmp_path, cfg.to_json())
    return [{key: value for key, value in row.items() if key != "wall_seconds"} for row in strategy.history]


def test_nodes_on_their_own_data_end_where_the_simulation_does(tmp_path: Path) -> None:
    cfg = tiny_config()
    simulated = _history(tmp_path / "sim", None)
    assert _history(tmp_path / "folders", write_partition_folders(cfg, tmp_path / "data")) == simulated
    assert _history(tmp_path / "dataset", dataset_node_configs(cfg)) == simulated


def test_a_bad_node_config_is_the_nodes_error_reply(tmp_path: Path) -> None:
    cfg = tiny_config()
    replies: list[Message] = []

    def keep(message: Message, reply: Message) -> list[Message]:
        replies.append(reply)
        return [reply]

    configs: list[dict[str, str | int]] = [
        {},
        {"data-dir": str(tmp_path / "missing")},
        {"num-partitions": 5},  # names no data: checked all the same
        {"colour": "blue"},
    ]
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, keep, configs)
    with pytest.raises(Exception, match="no node holds a sampled client|answered"):
        run_rounds(strategy, grid, 1, RoundPolicy(min_clients=4), tmp_path, cfg.to_json())
    reasons: list[str] = [reply.error.reason for reply in replies if reply.has_error()]  # type: ignore[misc]
    assert any("node data folder" in reason and "does not exist" in reason for reason in reasons)
    assert any("unknown node config key(s) ['colour']" in reason for reason in reasons)
    assert any("num-partitions=5 but the experiment has 4 clients" in reason for reason in reasons)
