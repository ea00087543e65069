"""A train instruction the client cannot answer is refused before local training: it costs no compute."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.typing import ConfigRecordValues

from fl_kd.clients.kd_app import app as client_app
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.roles import Instruction
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config
from tests.test_fedmd_common import peer_config

QUERIES = {
    "repeated": ({kd.POSITIONS: np.array([0, 1, 1], dtype=np.int64)}, {}),
    "out of range": ({kd.POSITIONS: np.array([0, 10**6], dtype=np.int64)}, {}),
    "floats": ({kd.POSITIONS: np.array([0.0, 1.0])}, {}),
    "unknown dtype": ({kd.POSITIONS: np.array([0, 1], dtype=np.int64)}, {kd.LOGITS_DTYPE: "float8"}),
    "missing": ({}, {}),
}


def _configs() -> list[ExperimentConfig]:
    return [tiny_config(), peer_config("dsfl"), peer_config("fedmd")]


@pytest.mark.parametrize("cfg", _configs(), ids=["fedgems", "dsfl", "fedmd"])
@pytest.mark.parametrize("query", list(QUERIES))
def test_a_bad_query_is_refused_before_any_training(
    cfg: ExperimentConfig, query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = get_algorithm(cfg.strategy.name).build_client(cfg, build_federation(cfg), 0)
    trained: list[str] = []

    def count(name: str) -> object:
        def training(self: DistillClient, *args: object, **kwargs: object) -> dict[str, float]:
            trained.append(name)
            return {"loss": 0.0, "train_samples": 0.0, "num_examples": 0.0}

        return training

    monkeypatch.setattr(DistillClient, "local_train", count("local_train"))
    monkeypatch.setattr(DistillClient, "train_supervised", count("train_supervised"))
    arrays, config = QUERIES[query]
    with pytest.raises(ValueError):
        client.train(1, Instruction(dict(arrays), dict(config)))
    assert trained == []


@pytest.mark.parametrize("action", [None, "goodbye", 7])
def test_a_query_other_than_hello_is_refused(action: str | int | None) -> None:
    cfg = tiny_config()
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
    node, context = next(iter(grid.contexts.items()))
    config = ConfigRecord({} if action is None else {kd.ACTION: action})
    message = Message(RecordDict({kd.CONFIG: config}), dst_node_id=node, message_type="query")
    with pytest.raises(ValueError, match="a query must say action='hello'"):
        client_app(message, context)
    hello = Message(
        RecordDict({kd.CONFIG: ConfigRecord({kd.ACTION: kd.HELLO})}), dst_node_id=node, message_type="query"
    )
    assert client_app(hello, context).content.metric_records[kd.METRICS][kd.PARTITION_ID] == 0


@pytest.mark.parametrize("config", [{kd.SERVER_ROUND: 10**5000}, {kd.SERVER_ROUND: 1, kd.CLIENT_STATE_ROUND: 10**5000}])
def test_an_int_too_long_to_print_is_refused_with_a_reason_that_says_so(config: dict[str, int]) -> None:
    """Simulation hands records over by pickle, so a round may be an int of any size: the refusal names it as
    such rather than failing to print it."""
    cfg = tiny_config()
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
    node, context = next(iter(grid.contexts.items()))
    record = ConfigRecord(cast(dict[str, ConfigRecordValues], config))
    message = Message(RecordDict({kd.CONFIG: record}), dst_node_id=node, message_type="train")
    with pytest.raises(ValueError, match="an int of 16610 bits"):
        client_app(message, context)
