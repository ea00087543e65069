"""FedAvg (McMahan et al., 2017) as a registered KD strategy: both runtimes agree, the sample-weighted average is
right on hand-made weights, heterogeneous device profiles are refused, and a bad answer never reaches the model.

The helpers here also serve ``test_fedavg_server_model.py`` and ``test_feddf.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from torch import nn

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import ConfigError, from_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import NUM_EXAMPLES, FedAvgServer
from fl_kd.kd.federation import build_federation, sample_clients
from fl_kd.kd.protocol import RUN_CONFIG_KEY
from fl_kd.kd.roles import DistillClientRole
from fl_kd.kd.runner import build_parties, run_inprocess, run_round
from fl_kd.kd.weights import model_arrays, weighted_average
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import TINY_PROFILE

Tamper = Callable[[Message, Message], list[Message]]

#: Two tiers training different models (cnn_tiny and cnn_small): what FedAvg refuses and FedDF is made for.
MIXED_PROFILE: dict[str, Any] = {
    **TINY_PROFILE,
    "name": "tiny_mixed",
    "tiers": {**TINY_PROFILE["tiers"], "high": {**TINY_PROFILE["tiers"]["high"], "model": "cnn_small"}},
}


def weight_config(name: str, profile: dict[str, Any] = TINY_PROFILE, **strategy: Any) -> ExperimentConfig:
    """Digits, 4 clients, a 60-sample transfer set, 2 rounds of strategy ``name`` (``strategy`` overrides)."""
    return from_mapping(
        ExperimentConfig,
        {
            "device_profile": profile,
            "num_clients": 4,
            "transfer": {"labelled": 60},
            "personalised_test_size": 40,
            "seed": 11,
            "strategy": {"name": name, "rounds": 2} | strategy,
        },
    )


def run_flower(cfg: ExperimentConfig, tamper: Tamper | None = None) -> KDStrategy:
    """The generic strategy and ClientApp over the in-process grid."""
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, tamper)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds)
    return strategy


def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


def assert_runtimes_agree(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Flower over the loopback grid equals the in-process runner, which repeats itself; returns its rows."""
    flower = without_time(run_flower(cfg).history)
    first, second = without_time(run_inprocess(cfg).rounds), without_time(run_inprocess(cfg).rounds)
    assert flower == first
    assert first == second
    assert all(row["n_rejected"] == 0 and row["n_missing"] == 0 for row in first)
    return first


NODE_OF_CLIENT0 = 1000  # LoopbackGrid gives partition p the node id 1000 + 7 p


def _first_train_of_client0(message: Message) -> bool:
    return (
        message.metadata.message_type == "train"
        and int(message.content["config"]["server-round"]) == 1  # type: ignore[arg-type]  # Flower types config values as a union
        and message.metadata.dst_node_id == NODE_OF_CLIENT0
    )


def replace_answer(change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Tamper:
    """Client 0's first answer with its arrays replaced by ``change(arrays)``."""

    def tamper(message: Message, reply: Message) -> list[Message]:
        if not _first_train_of_client0(message):
            return [reply]
        arrays = change({name: array.numpy() for name, array in reply.content.array_records["arrays"].items()})
        content = RecordDict(
            {
                "arrays": ArrayRecord({name: Array(value) for name, value in arrays.items()}),
                "metrics": reply.content["metrics"],
            }
        )
        return [Message(content, reply_to=message)]

    return tamper


def drop_client0(message: Message, reply: Message) -> list[Message]:
    return [] if _first_train_of_client0(message) else [reply]


def first_weight(arrays: dict[str, np.ndarray]) -> str:
    return next(name for name in arrays if name != NUM_EXAMPLES)


def _nan_weight(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    name = first_weight(arrays)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan
    return arrays


def _with(name_of: Callable[[dict[str, np.ndarray]], str], value: Callable[[np.ndarray], Any]) -> Callable:
    def change(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = name_of(arrays)
        arrays[name] = value(arrays[name])
        return arrays

    return change


def _without_count(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k != NUM_EXAMPLES}


BAD_ANSWERS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "nan weight": _nan_weight,
    "wrong shape": _with(first_weight, lambda w: w[:1].copy()),
    "float64 weight": _with(first_weight, lambda w: w.astype(np.float64)),
    "no sample count": _without_count,
    "zero samples": _with(lambda _: NUM_EXAMPLES, lambda n: np.zeros(1, dtype=np.int64)),
    "huge sample count": _with(lambda _: NUM_EXAMPLES, lambda n: np.array([10**9], dtype=np.int64)),
    "float sample count": _with(lambda _: NUM_EXAMPLES, lambda n: n.astype(np.float32)),
}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


# -- tests ------------------------------------------------------------------------------------------------------------
def test_fedavg_runs_alike_in_both_runtimes() -> None:
    rows = assert_runtimes_agree(weight_config("fedavg", fraction_fit=0.75))
    for row in rows:
        assert row["num_answered"] == 3
        # Weights both ways: the downlink carries the global model twice (train and evaluate), the uplink once
        # with an 8-byte sample count.
        assert row["downlink_bytes"] == 2 * (row["uplink_bytes"] - 3 * 8)


def assert_sampled_clients_hold(cfg: ExperimentConfig, published: Callable[[Any, int], dict[str, np.ndarray]]) -> Any:
    """After one round the sampled clients hold ``published(server, client_id)``, the others do not; returns the
    server."""
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    run_round(cfg, 1, federation, server, clients)
    sampled = sample_clients(cfg.num_clients, cfg.strategy.fraction_fit, cfg.seed, 1)
    for client in clients:
        assert isinstance(client, DistillClientRole)
        weights, expected = model_arrays(client.client.model), published(server, client.client_id)
        same = weights.keys() == expected.keys() and all(np.array_equal(weights[k], expected[k]) for k in weights)
        assert same == (client.client_id in sampled)
    return server


def test_the_sampled_clients_receive_the_new_global_model() -> None:
    cfg = weight_config("fedavg", fraction_fit=0.5, rounds=1)
    assert_sampled_clients_hold(cfg, lambda server, _cid: model_arrays(server.server_model))


def test_weighted_average_by_sample_count_on_hand_made_weights() -> None:
    average = weighted_average(
        [{"w": np.array([1.0, 2.0], dtype=np.float32)}, {"w": np.array([4.0, 8.0], dtype=np.float32)}], [1.0, 2.0]
    )
    np.testing.assert_array_equal(average["w"], np.array([3.0, 6.0], dtype=np.float32))


def test_fedavg_server_averages_answers_by_their_sample_counts() -> None:
    model = nn.Linear(2, 1)
    server = FedAvgServer(model, "linear", num_clients=3, max_examples=100)
    answers: dict[int, dict[str, np.ndarray]] = {
        cid: {
            "weight": np.full((1, 2), value, dtype=np.float32),
            "bias": np.array([value], dtype=np.float32),
            NUM_EXAMPLES: np.array([count], dtype=np.int64),
        }
        for cid, (value, count) in {0: (1.0, 10), 2: (4.0, 30)}.items()
    }
    assert all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    assert server.aggregate(1, answers) == {"num_answered": 2}
    # (10 * 1 + 30 * 4) / 40 = 3.25
    expected = {"weight": np.full((1, 2), 3.25, dtype=np.float32), "bias": np.array([3.25], dtype=np.float32)}
    for instruction in (server.evaluate_instruction(1, 1), server.train_instruction(2, 0)):
        assert instruction.arrays.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(instruction.arrays[name], value)
    np.testing.assert_array_equal(model_arrays(server.server_model)["bias"], expected["bias"])


def test_a_device_profile_with_several_architectures_is_refused() -> None:
    with pytest.raises(ConfigError, match="device_profile 'tiny_mixed'.*cnn_small, cnn_tiny"):
        weight_config("fedavg", MIXED_PROFILE)


@pytest.fixture(scope="module")
def without_client0() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One round in which client 0's answer never arrives: what every rejected answer must reduce to."""
    strategy = run_flower(weight_config("fedavg", rounds=1), drop_client0)
    assert strategy.history[0]["n_missing"] == 1
    return strategy.history[0], state(strategy.server.server_model)


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_bad_answer_is_dropped_as_if_the_client_had_not_answered(
    case: str, without_client0: tuple[dict[str, Any], dict[str, torch.Tensor]]
) -> None:
    strategy = run_flower(weight_config("fedavg", rounds=1), replace_answer(BAD_ANSWERS[case]))
    row = strategy.history[0]
    reference_row, reference_state = without_client0
    assert row["n_rejected"] == 1 and row["num_answered"] == 3
    assert_same_state(state(strategy.server.server_model), reference_state)
    assert row["server_acc"] == reference_row["server_acc"]
