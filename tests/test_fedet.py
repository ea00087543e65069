"""Fed-ET: both runtimes agree, the ensemble rules give hand-computed answers, bad configs and answers are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg.roles import NUM_EXAMPLES as EXAMPLES
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedet import FedETServer, build_server_role, ensemble_targets
from fl_kd.kd.protocol import RUN_CONFIG_KEY
from fl_kd.kd.runner import run_inprocess
from fl_kd.kd.training import DivergedError
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid

# Two client architectures (one per tier) and a larger server model.
PROFILE: dict[str, Any] = {
    "name": "tiny_two_arch",
    "server_model": "cnn_small",
    "tiers": {
        "low": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "high": {"model": "cnn_small", "share": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
    },
}


def _config(**strategy: Any) -> ExperimentConfig:
    """Digits, 4 clients, 30 labelled + 30 unlabelled public samples (Fed-ET reads only their inputs)."""
    settings = {"name": "fedet", "rounds": 2, "server_epochs": 1, "transfer_epochs": 1, "server_batch_size": 32}
    if strategy.get("server_epochs") == 0:  # no server training reads a batch size (refused if given)
        del settings["server_batch_size"]
    return from_mapping(
        ExperimentConfig,
        {
            "device_profile": PROFILE,
            "num_clients": 4,
            "transfer": {"labelled": 30, "unlabelled": 30},
            "personalised_test_size": 40,
            "seed": 11,
            "strategy": settings | strategy,
        },
    )


def _run(cfg: ExperimentConfig, tamper: Callable[[Message, Message], list[Message]] | None = None):  # noqa: ANN202
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, tamper)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds)
    return strategy


def _without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


# -- end to end ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"fraction_fit": 0.5, "consensus_loss": "soft"}])
def test_flower_messages_reproduce_the_reference_runner(overrides: dict[str, Any]) -> None:
    cfg = _config(**overrides)
    reference = run_inprocess(cfg)
    strategy = _run(cfg)
    assert _without_time(strategy.history) == _without_time(reference.rounds)
    rows = strategy.history
    assert all(row["n_rejected"] == 0 and row["n_missing"] == 0 for row in rows)
    assert all(np.isfinite(row["server_acc"]) and np.isfinite(row["server_loss"]) for row in rows)
    sampled = round(cfg.strategy.fraction_fit * cfg.num_clients)
    assert all(row["uplink_bytes"] > 0 and row["num_models"] == sampled for row in rows)


def test_same_seed_same_numbers_and_another_seed_differs() -> None:
    cfg = _config(rounds=1)
    first, second = run_inprocess(cfg), run_inprocess(cfg)
    assert _without_time(first.rounds) == _without_time(second.rounds)
    other = run_inprocess(from_mapping(ExperimentConfig, {**to_mapping(cfg), "seed": 12}))
    assert _without_time(other.rounds) != _without_time(first.rounds)


# -- hand-made ensemble rules ----------------------------------------------------------------------------------------
def test_weighted_consensus_and_diversity_targets_by_hand() -> None:
    # 3 clients, 2 samples, 3 classes. Variance over classes: [3,0,0] and [0,0,3] -> 2, [6,0,0] and [0,6,0] -> 8.
    logits = torch.tensor(
        [
            [[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]],  # client A
            [[0.0, 3.0, 0.0], [0.0, 6.0, 0.0]],  # client B
            [[6.0, 0.0, 0.0], [3.0, 0.0, 0.0]],  # client C
        ]
    )
    targets = ensemble_targets(logits)
    # Sample 0: variances 2, 2, 8 -> weights 1/6, 1/6, 2/3; consensus [3/6 + 4, 3/6, 0] = [4.5, 0.5, 0] -> class 0;
    # only B dissents, so the diversity target is B's logits.
    # Sample 1: variances 2, 8, 2 -> weights 1/6, 2/3, 1/6; consensus [0.5, 4, 0.5] -> class 1; A and C dissent with
    # equal variance, so the diversity target is their plain average [1.5, 0, 1.5].
    expected_weights = torch.tensor([[1 / 6, 1 / 6], [1 / 6, 2 / 3], [2 / 3, 1 / 6]], dtype=torch.float64)
    torch.testing.assert_close(targets.weights, expected_weights)
    torch.testing.assert_close(targets.consensus_logits, torch.tensor([[4.5, 0.5, 0.0], [0.5, 4.0, 0.5]]))
    assert targets.consensus_labels.tolist() == [0, 1]
    assert targets.agrees.tolist() == [[True, False], [False, True], [True, False]]
    torch.testing.assert_close(targets.diversity_logits, torch.tensor([[0.0, 3.0, 0.0], [1.5, 0.0, 1.5]]))
    assert targets.has_dissent.tolist() == [True, True]
    assert targets.agreement() == pytest.approx(0.5)


def test_unanimous_and_flat_outputs() -> None:
    # Sample 0: all agree on class 2 -> no dissent, zero diversity target. Sample 1: all outputs flat (variance 0)
    # -> equal weights, consensus [1, 1, 1] with argmax 0 (first), and every client's argmax is 0 too.
    logits = torch.tensor(
        [
            [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]],
            [[0.0, 1.0, 4.0], [1.0, 1.0, 1.0]],
        ]
    )
    targets = ensemble_targets(logits)
    torch.testing.assert_close(targets.weights[:, 1], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert targets.consensus_labels.tolist() == [2, 0]
    assert targets.has_dissent.tolist() == [False, False]
    assert torch.equal(targets.diversity_logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        ensemble_targets(torch.tensor([[[float("nan"), 0.0]]]))


def test_small_models_are_the_sample_weighted_average_per_architecture() -> None:
    cfg = _config(server_epochs=0, transfer_epochs=0)
    federation = build_federation(cfg)
    server = build_server_role(cfg, federation)
    by_arch: dict[str, list[int]] = {}
    for client_id, name in server.architectures.items():
        by_arch.setdefault(name, []).append(client_id)
    answers: dict[int, dict[str, np.ndarray]] = {}
    expected: dict[str, float] = {}
    for name, members in sorted(by_arch.items()):
        reference = server.server.reference(name)
        # Client i of the architecture sends every weight equal to i + 1, with i + 1 samples: sum (i+1)^2 / sum (i+1).
        for i, client_id in enumerate(members):
            answers[client_id] = {k: np.full_like(v, i + 1.0) for k, v in reference.items()}
            answers[client_id][EXAMPLES] = np.array([i + 1], dtype=np.int64)
        counts = np.arange(1, len(members) + 1, dtype=np.float64)
        expected[name] = float((counts**2).sum() / counts.sum())
    assert len(by_arch) == 2 and all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    stats = server.aggregate(1, answers)
    assert stats["num_models"] == 4
    for name, value in expected.items():
        arrays = server.server.small_model_arrays(name)
        assert all(np.allclose(array, value) for array in arrays.values()), name


# -- configs Fed-ET cannot run ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"fraction_fit": 0.25}, "at least 2 clients per round"),
        ({"diversity_weight": -0.1}, "strategy.diversity_weight"),
        ({"consensus_loss": "median"}, "strategy.consensus_loss"),
        ({"temperature": 0.0}, "strategy.temperature"),
        ({"transfer_epochs": -1}, "strategy.transfer_epochs"),
    ],
)
def test_a_config_fedet_cannot_run_is_refused(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        _config(**overrides)


# -- bad answers from client 0 in round 1 ----------------------------------------------------------------------------
NODE_OF_CLIENT0 = 1000  # LoopbackGrid gives partition p the node id 1000 + 7 p


def _is_first_train_of_client0(message: Message) -> bool:
    return (
        message.metadata.message_type == "train"
        and int(message.content["config"]["server-round"]) == 1  # type: ignore[arg-type]  # Flower types config values as a union
        and message.metadata.dst_node_id == NODE_OF_CLIENT0
    )


def _replace_arrays(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Message, Message], list[Message]]:
    def tamper(message: Message, reply: Message) -> list[Message]:
        if not _is_first_train_of_client0(message):
            return [reply]
        arrays = {name: array.numpy().copy() for name, array in reply.content.array_records["arrays"].items()}
        change(arrays)
        content = RecordDict(
            {
                "arrays": ArrayRecord({name: Array(value) for name, value in arrays.items()}),
                "metrics": reply.content["metrics"],
            }
        )
        return [Message(content, reply_to=message)]

    return tamper


def _first_weight(arrays: dict[str, np.ndarray]) -> str:
    return next(name for name in arrays if name != EXAMPLES)


def _nan(arrays: dict[str, np.ndarray]) -> None:
    arrays[_first_weight(arrays)].flat[0] = np.nan


def _wrong_shape(arrays: dict[str, np.ndarray]) -> None:
    name = _first_weight(arrays)
    arrays[name] = arrays[name][:1].copy()


def _float64(arrays: dict[str, np.ndarray]) -> None:
    name = _first_weight(arrays)
    arrays[name] = arrays[name].astype(np.float64)


def _missing(arrays: dict[str, np.ndarray]) -> None:
    del arrays[_first_weight(arrays)]


def _extra(arrays: dict[str, np.ndarray]) -> None:
    arrays["backdoor"] = np.zeros(3, dtype=np.float32)


def _huge(arrays: dict[str, np.ndarray]) -> None:
    # Finite weights whose logits on the public inputs overflow to inf.
    for name in arrays:
        if name != EXAMPLES:
            arrays[name] = np.full_like(arrays[name], 3e38)


def _count(value: np.ndarray) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[EXAMPLES] = value

    return change


def _drop(message: Message, reply: Message) -> list[Message]:
    return [] if _is_first_train_of_client0(message) else [reply]


def _duplicate(message: Message, reply: Message) -> list[Message]:
    return [reply, reply] if _is_first_train_of_client0(message) else [reply]


def _error(message: Message, reply: Message) -> list[Message]:
    if _is_first_train_of_client0(message):
        return [Message(Error(code=1, reason="client crashed"), reply_to=message)]
    return [reply]


BAD_ANSWERS = {
    "nan weight": (_replace_arrays(_nan), 1),
    "wrong shape": (_replace_arrays(_wrong_shape), 1),
    "float64 weight": (_replace_arrays(_float64), 1),
    "missing weight": (_replace_arrays(_missing), 1),
    "unexpected array": (_replace_arrays(_extra), 1),
    "overflowing logits": (_replace_arrays(_huge), 1),
    "zero examples": (_replace_arrays(_count(np.array([0], dtype=np.int64))), 1),
    "float examples": (_replace_arrays(_count(np.array([5.0], dtype=np.float32))), 1),
    "examples of shape (2,)": (_replace_arrays(_count(np.array([5, 5], dtype=np.int64))), 1),
    "duplicate replies": (_duplicate, 2),
    "error reply": (_error, 1),
}


def _server_state(strategy: Any) -> dict[str, torch.Tensor]:
    state = strategy.server.server.state_dict()
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for name, small in state["small_models"].items():
        flat |= {f"{name}.{k}": v for k, v in small.items()}
    return flat


@pytest.fixture(scope="module")
def without_client0() -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The round in which client 0's answer never arrives: what every rejected answer must reduce to."""
    strategy = _run(_config(rounds=1), _drop)
    return strategy.history, _server_state(strategy)


def test_missing_reply_is_counted(without_client0: tuple[list[dict[str, Any]], dict[str, torch.Tensor]]) -> None:
    history, _ = without_client0
    assert history[0]["n_missing"] == 1 and history[0]["n_rejected"] == 0 and history[0]["num_models"] == 3


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_is_dropped_and_never_reaches_the_server(
    case: str, without_client0: tuple[list[dict[str, Any]], dict[str, torch.Tensor]]
) -> None:
    tamper, rejected = BAD_ANSWERS[case]
    strategy = _run(_config(rounds=1), tamper)
    row = strategy.history[0]
    assert row["n_rejected"] == rejected
    assert np.isfinite(row["server_acc"])
    reference_history, reference_state = without_client0
    state = _server_state(strategy)
    assert state.keys() == reference_state.keys()
    assert all(torch.equal(state[name], reference_state[name]) for name in reference_state)
    assert row["server_acc"] == reference_history[0]["server_acc"]
    assert row["num_models"] == 3


def test_server_role_rejects_without_crashing() -> None:
    cfg = _config()
    server = build_server_role(cfg, build_federation(cfg))
    assert isinstance(server, FedETServer)
    assert server.check_answer(1, 99, {}) == "unknown client 99"
    assert "num-examples" in str(server.check_answer(1, 0, {}))


def test_a_server_that_diverges_stops_the_run_with_one_error_naming_the_settings() -> None:
    with pytest.raises(DivergedError, match=r"diverged: .* Lower strategy\.server_lr or strategy\.transfer_lr"):
        run_inprocess(_config(rounds=1, server_lr=1e12))
