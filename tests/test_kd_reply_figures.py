"""What a KD reply reports is believed only from the reply the server asked for: accuracies from the clients asked
to report them this round, training counts from one reply to this round's message; and a run that allows larger
weights than the default lets its clients load them."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config


def _config(**changes: Any) -> ExperimentConfig:
    return from_mapping(ExperimentConfig, to_mapping(tiny_config(rounds=2)) | changes)


def _ids(messages: list[Message], phase: str) -> list[Message]:
    for message in messages:  # ids as a SuperLink gives them, so that reply_to means something
        message.metadata.__dict__["_message_id"] = f"{phase}-{message.metadata.dst_node_id}"
    return messages


def _trained(cfg: ExperimentConfig) -> tuple[KDStrategy, LoopbackGrid, list[Message], list[Message]]:
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
    sent = _ids(list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)), "train")
    return strategy, grid, sent, list(grid.send_and_receive(sent))


def _evaluate(strategy: KDStrategy, grid: LoopbackGrid, replies: list[Message] | None = None) -> dict[str, Any]:
    sent = _ids(list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)), "eval")
    strategy.aggregate_evaluate(1, list(grid.send_and_receive(sent)) if replies is None else replies)
    return strategy.history[-1]


def test_an_accuracy_from_a_client_not_asked_to_report_is_not_counted() -> None:
    cfg = _config(evaluation={"fraction_clients": 0.5, "test_samples": 0})
    strategy, grid, _, replies = _trained(cfg)
    strategy.aggregate_train(1, replies)
    honest = _evaluate(copy.deepcopy(strategy), copy.deepcopy(grid))
    sent = _ids(list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)), "eval")
    answers = list(grid.send_and_receive(sent))
    unasked = next(i for i, m in enumerate(sent) if m.content[kd.CONFIG][kd.EVALUATE] is False)
    boast = MetricRecord(
        dict(answers[unasked].content.metric_records[kd.METRICS]) | {kd.ACCURACY: 1.0, kd.PERSONALISED_ACCURACY: 1.0}
    )
    answers[unasked] = Message(RecordDict({kd.METRICS: boast}), reply_to=sent[unasked])
    strategy.aggregate_evaluate(1, answers)
    row = strategy.history[-1]
    assert row["client_acc_mean"] == honest["client_acc_mean"] and row["client_acc_max"] < 1.0


def test_evaluate_replies_the_round_cannot_use_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """An accuracy of NaN or 7.5 and an error reply in the evaluate phase: left out of the tiers, and counted in
    ``n_eval_dropped`` and logged with their reasons, so that a round's figures from fewer clients do not pass
    unseen."""
    cfg = _config()
    strategy, grid, _, replies = _trained(cfg)
    strategy.aggregate_train(1, replies)
    honest = _evaluate(copy.deepcopy(strategy), copy.deepcopy(grid))
    sent = _ids(list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)), "eval")
    answers = list(grid.send_and_receive(sent))
    for i, acc in ((0, float("nan")), (1, 7.5)):
        figures = MetricRecord(dict(answers[i].content.metric_records[kd.METRICS]) | {kd.ACCURACY: acc})
        answers[i] = Message(RecordDict({kd.METRICS: figures}), reply_to=sent[i])
    answers[2] = Message(Error(code=0, reason="boom"), reply_to=sent[2])
    with caplog.at_level(logging.WARNING):
        strategy.aggregate_evaluate(1, answers)
    row = strategy.history[-1]
    assert honest["n_eval_dropped"] == 0 and row["n_eval_dropped"] == 3 and row["n_rejected"] == 0
    assert "accuracies missing or outside [0, 1]" in caplog.text and "boom" in caplog.text
    assert row["server_acc"] == honest["server_acc"]


def test_refused_train_replies_book_no_training() -> None:
    cfg = _config()
    strategy, grid, sent, replies = _trained(cfg)
    stale = Message(RecordDict({kd.METRICS: MetricRecord({kd.TRAIN_SAMPLES: 1e15})}), reply_to=sent[0])
    stale.metadata.__dict__["_reply_to_message_id"] = "train-of-an-earlier-round"
    rows = {}
    for name, extra in (("honest", []), ("stale", [stale]), ("repeated", [replies[1]] * 2)):
        s, g = copy.deepcopy(strategy), copy.deepcopy(grid)
        s.aggregate_train(1, replies + extra)
        rows[name] = _evaluate(s, g)
    flops = {name: {k: v for k, v in row.items() if k.startswith("client_flops")} for name, row in rows.items()}
    assert flops["stale"] == flops["honest"]
    # The node that answered three times is refused, and its training counts for nothing, not three times.
    assert all(flops["repeated"][k] <= flops["honest"][k] for k in flops["honest"])


def test_weight_sharing_clients_load_weights_the_runs_bound_allows() -> None:
    cfg = from_mapping(
        ExperimentConfig,
        to_mapping(tiny_config(rounds=2)) | {"strategy": {"name": "fedavg", "rounds": 2}, "max_abs_value": 1e5},
    )
    strategy = make_strategy(cfg)
    published = strategy.server.published
    name = next(iter(published))
    first = next(iter(published[name]))
    published[name][first] = published[name][first].copy()
    published[name][first].flat[0] = 2e4  # within this run's headroom (half of 1e5), beyond the default 1e4
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
    sent = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(sent))
    assert not [reply.error.reason for reply in replies if reply.has_error()]
