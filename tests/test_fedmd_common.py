"""What the FedMD and DS-FL tests share (the two peers run the same code paths), and tests of those shared paths.

Helpers: a tiny config of either peer, a run of the generic Flower strategy and ClientApp over the in-process
``LoopbackGrid``, and client 0's tampered first answers (each must be dropped, leaving the server exactly as if
client 0 had not answered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import from_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedmd.public_logits import PublicLogitsServer, round_positions
from fl_kd.kd.runner import build_parties, run_inprocess
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid, Tamper
from tests.kd_configs import TINY_PROFILE

Rows = list[dict[str, Any]]


def peer_config(name: str, transfer: dict[str, int] | None = None, **strategy: Any) -> ExperimentConfig:
    """Digits, 4 clients of tiny CNNs, a transfer set of 30 labelled and 30 unlabelled samples, 2 rounds."""
    settings = {"name": name, "rounds": 2, "server_epochs": 1, "server_batch_size": 32} | strategy
    return from_mapping(
        ExperimentConfig,
        {
            "device_profile": TINY_PROFILE,
            "num_clients": 4,
            "transfer": transfer or {"labelled": 30, "unlabelled": 30},
            "personalised_test_size": 40,
            "seed": 11,
            "strategy": settings,
        },
    )


def run_flower(cfg: ExperimentConfig, tamper: Tamper | None = None) -> KDStrategy:
    """The generic strategy and ClientApp exchanging real Flower messages in this process."""
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()}, tamper)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds)
    return strategy


def without_time(rows: Rows) -> Rows:
    """Metric rows without the wall-clock figure (the one that differs between runs)."""
    return [{key: value for key, value in row.items() if key != "wall_seconds"} for row in rows]


def check_runtimes_agree_and_repeat(cfg: ExperimentConfig) -> None:
    """Flower over messages equals the in-process runner, and a second run of the same seed equals the first."""
    flower = run_flower(cfg)
    reference = run_inprocess(cfg)
    assert without_time(flower.history) == without_time(reference.rounds)
    assert without_time(run_inprocess(cfg).rounds) == without_time(reference.rounds)
    assert all(row["n_rejected"] == 0 and row["n_missing"] == 0 for row in flower.history)
    assert all(np.isfinite(row["server_acc"]) for row in flower.history)


# -- client 0's first answer tampered with ----------------------------------------------------------------------------
NODE_OF_CLIENT0 = 1000  # LoopbackGrid gives partition p the node id 1000 + 7 p


def _first_train_of_client0(message: Message) -> bool:
    return (
        message.metadata.message_type == "train"
        and message.content.config_records[kd.CONFIG][kd.SERVER_ROUND] == 1
        and message.metadata.dst_node_id == NODE_OF_CLIENT0
    )


def drop_client0(message: Message, reply: Message) -> list[Message]:
    """Client 0's first answer never arrives."""
    return [] if _first_train_of_client0(message) else [reply]


def _edit_answer(edit: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Tamper:
    def tamper(message: Message, reply: Message) -> list[Message]:
        if not _first_train_of_client0(message):
            return [reply]
        arrays = {name: array.numpy() for name, array in reply.content.array_records[kd.ARRAYS].items()}
        edited = ArrayRecord({name: Array(value) for name, value in edit(arrays).items()})
        content = RecordDict({kd.ARRAYS: edited, kd.METRICS: reply.content[kd.METRICS]})
        return [Message(content, reply_to=message)]

    return tamper


def _nan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    logits = arrays[kd.LOGITS].copy()
    logits[0, 0] = np.nan
    return arrays | {kd.LOGITS: logits}


BAD_ANSWERS: dict[str, Tamper] = {
    "nan logits": _edit_answer(_nan),
    "wrong shape": _edit_answer(lambda a: a | {kd.LOGITS: a[kd.LOGITS][:, :-1].copy()}),
    "float64 logits": _edit_answer(lambda a: a | {kd.LOGITS: a[kd.LOGITS].astype(np.float64)}),
    "positions not asked": _edit_answer(lambda a: a | {kd.POSITIONS: a[kd.POSITIONS][::-1].copy()}),
    "an extra array": _edit_answer(lambda a: a | {"labels": np.zeros(3, dtype=np.int64)}),
}


def check_bad_answer_dropped(cfg: ExperimentConfig, tamper: Tamper, without_client0: KDStrategy) -> None:
    """The tampered answer is rejected, and the server learnt exactly what it learns when client 0 is silent."""
    strategy = run_flower(cfg, tamper)
    row, reference = strategy.history[0], without_client0.history[0]
    assert row["n_rejected"] == 1 and reference["n_missing"] == 1
    assert row["num_answers"] == reference["num_answers"] == cfg.num_clients - 1
    server, expected = strategy.server, without_client0.server
    assert isinstance(server, PublicLogitsServer) and isinstance(expected, PublicLogitsServer)
    state, expected_state = server.state_dict(), expected.state_dict()
    assert all(torch.equal(state[name], expected_state[name]) for name in expected_state)
    sent, expected_sent = server.evaluate_instruction(1, 0).arrays, expected.evaluate_instruction(1, 0).arrays
    assert all(np.array_equal(sent[name], expected_sent[name]) for name in expected_sent)
    assert row["server_acc"] == reference["server_acc"]


# -- the shared paths themselves --------------------------------------------------------------------------------------
def test_round_positions_are_all_or_a_sorted_sample_seeded_by_the_round() -> None:
    assert np.array_equal(round_positions(5, None, seed=3, round=1), np.arange(5))
    assert np.array_equal(round_positions(5, 9, seed=3, round=1), np.arange(5))
    first = round_positions(100, 10, seed=3, round=1)
    assert first.size == np.unique(first).size == 10 and np.all(np.diff(first) > 0)
    assert first.min() >= 0 and first.max() < 100
    assert np.array_equal(first, round_positions(100, 10, seed=3, round=1))
    assert not np.array_equal(first, round_positions(100, 10, seed=3, round=2))


@pytest.mark.parametrize("name", ["fedmd", "dsfl"])
def test_a_round_without_answers_sends_nothing_and_leaves_every_model_unchanged(name: str) -> None:
    cfg = peer_config(name, rounds=1)
    server, clients = build_parties(cfg, build_federation(cfg))
    assert isinstance(server, PublicLogitsServer)
    before = server.state_dict()
    figures = server.aggregate(1, {})
    assert figures["num_answers"] == 0 and figures["server_loss"] == 0.0
    assert all(torch.equal(before[key], value) for key, value in server.state_dict().items())
    instruction = server.evaluate_instruction(1, 0)
    assert instruction.arrays[kd.POSITIONS].shape == (0,)
    assert instruction.arrays[kd.SERVER_LOGITS].shape == (0, server.num_classes)
    received = clients[0].receive(1, instruction)
    assert received[kd.DISTILL_LOSS] == 0.0
