"""Reference runner on a tiny digits federation: determinism, bookkeeping, and agreement with a Flower-style
driver that rebuilds every party from its state each round."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fl_kd.data import DatasetSplits, load_dataset
from fl_kd.kd.federation import build_client, build_federation, sample_clients
from fl_kd.kd.fedgems import FedGEMSConfig
from fl_kd.kd.fedgems.parties import build_client_role, build_server_role
from fl_kd.kd.metrics import accuracy_summary, downlink_nbytes, uplink_nbytes
from fl_kd.kd.runner import run_inprocess, run_round, summarise
from tests.kd_configs import tiny_config as _config


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


def _without_time(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rounds]


def test_two_rounds_are_bit_identical_across_runs(digits: DatasetSplits) -> None:
    first = run_inprocess(_config(), data=digits)
    second = run_inprocess(_config(), data=digits)
    assert len(first.rounds) == 2
    assert _without_time(first.rounds) == _without_time(second.rounds)
    other_seed = run_inprocess(_config(seed=12), data=digits)
    assert _without_time(first.rounds) != _without_time(other_seed.rounds)


def test_round_bookkeeping(digits: DatasetSplits) -> None:
    cfg = _config(fraction_fit=0.5, logits_dtype="float16")
    result = run_inprocess(cfg, data=digits)
    for metrics in result.rounds:
        assert metrics["n_self"] + metrics["n_cache"] + metrics["n_clients"] + metrics["n_ce_only"] == 60
        # To each of 2 clients: the query (int64 positions) and N x C float16 logits.
        assert metrics["downlink_bytes"] == 2 * (metrics["num_answered"] * 8 + 60 * 10 * 2)
        # Each of the 2 clients answers every queried position with C float16 logits, in the order asked.
        assert metrics["uplink_bytes"] == 2 * metrics["num_answered"] * 10 * 2
        assert 0.0 <= metrics["server_acc"] <= 1.0
        for prefix in ("client_acc", "client_pacc"):
            for tier in ("", "_low", "_high"):
                assert (
                    metrics[f"{prefix}{tier}_min"] <= metrics[f"{prefix}{tier}_mean"] <= metrics[f"{prefix}{tier}_max"]
                )
    # Once the server caches what it got right, it asks for less.
    assert result.rounds[-1]["cache_size"] >= result.rounds[0]["cache_size"]
    assert result.summary["total_downlink_bytes"] == sum(r["downlink_bytes"] for r in result.rounds)
    assert result.summary["final_server_acc"] == result.rounds[-1]["server_acc"]


def test_flower_style_rebuild_each_round_gives_the_same_metrics(digits: DatasetSplits, tmp_path: Path) -> None:
    """A Flower ClientApp rebuilds its client each round and restores the state kept in context.state; the
    strategy may checkpoint the server. Both must give exactly the runner's numbers."""
    cfg = _config(fraction_fit=0.75)
    expected = run_inprocess(cfg, data=digits)

    federation = build_federation(cfg, digits)
    client_states = {k: build_client_role(cfg, federation, k).state_dict() for k in range(federation.num_clients)}
    server_path = tmp_path / "server.pt"
    build_server_role(cfg, federation).save(server_path)
    observed = []
    for round_ in range(1, cfg.strategy.rounds + 1):
        server = build_server_role(cfg, federation)
        server.server.load(server_path)
        clients = [build_client_role(cfg, federation, k) for k in range(federation.num_clients)]
        for client in clients:
            client.load_state_dict(client_states[client.client_id])
        observed.append(run_round(cfg, round_, federation, server, clients))
        client_states = {client.client_id: client.state_dict() for client in clients}
        server.save(server_path)
    assert _without_time(observed) == _without_time(expected.rounds)


def test_federation_is_disjoint_and_deterministic(digits: DatasetSplits) -> None:
    cfg = _config()
    federation = build_federation(cfg, digits)
    again = build_federation(cfg, digits)
    everything = np.concatenate([federation.transfer_idx, *federation.client_idx])
    assert np.unique(everything).size == everything.size == digits.y_train.shape[0]
    assert federation.transfer_idx.size == 60
    assert all(np.array_equal(a, b) for a, b in zip(federation.client_idx, again.client_idx, strict=True))
    assert [t.name for t in federation.tiers].count("low") == 2
    assert all(idx.size == 40 for idx in federation.personalised_test_idx)
    # Clients built twice from the config start from identical weights (what a Flower client relies on).
    a, b = (
        build_client(cfg, federation, 1).state_dict()["model"],
        build_client(cfg, federation, 1).state_dict()["model"],
    )
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    with pytest.raises(ValueError, match="client_id"):
        build_client(cfg, federation, 4)
    # Deterministic kernels are switched on for CUDA devices only; CPU runs leave torch's flags alone.
    assert not torch.are_deterministic_algorithms_enabled()


def test_sample_clients_is_keyed_by_seed_and_round() -> None:
    picked = sample_clients(10, 0.3, seed=0, round=4)
    assert picked == sorted(picked) and len(picked) == 3 and len(set(picked)) == 3
    assert picked == sample_clients(10, 0.3, seed=0, round=4)
    assert {tuple(sample_clients(10, 0.3, 0, r)) for r in range(1, 8)} != {tuple(picked)}
    assert sample_clients(10, 1.0, 0, 1) == list(range(10))
    assert len(sample_clients(10, 0.01, 0, 1)) == 1
    with pytest.raises(ValueError, match="fraction"):
        sample_clients(10, 0.0, 0, 1)


def test_accuracy_summary_by_hand() -> None:
    summary = accuracy_summary({0: 0.5, 1: 0.75, 2: 1.0}, {0: "low", 1: "high", 2: "low"}, "client_acc")
    assert summary == {
        "client_acc_mean": 0.75,
        "client_acc_min": 0.5,
        "client_acc_max": 1.0,
        "client_acc_high_mean": 0.75,
        "client_acc_high_min": 0.75,
        "client_acc_high_max": 0.75,
        "client_acc_low_mean": 0.75,
        "client_acc_low_min": 0.5,
        "client_acc_low_max": 1.0,
    }
    with pytest.raises(ValueError, match="tier"):
        accuracy_summary({3: 0.1}, {0: "low"}, "client_acc")


def test_payload_sizes_by_hand() -> None:
    positions = np.arange(5, dtype=np.int64)
    answers: dict[int, tuple[np.ndarray, np.ndarray]] = {
        0: (positions, np.zeros((5, 3), np.float32)),
        1: (positions, np.zeros((5, 3), np.float16)),
    }
    assert uplink_nbytes(answers) == (40 + 60) + (40 + 30)
    assert downlink_nbytes(positions, np.zeros((7, 3), np.float32), num_receivers=4) == (40 + 7 * 3 * 4) * 4


def test_summary_and_config_validation() -> None:
    assert summarise([], 1.0) == {"rounds": 0, "wall_seconds": 1.0}
    with pytest.raises(ValueError, match="logits_dtype"):
        _config(logits_dtype="int8")
    with pytest.raises(ValueError, match="fraction_fit"):
        _config(fraction_fit=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        _config(epsilon=-0.1)
    strategy = _config().strategy
    assert isinstance(strategy, FedGEMSConfig)
    assert math.isclose(strategy.server_config().epsilon, 0.75)


def test_the_summarys_wall_seconds_are_the_rounds_as_in_the_flower_runtime() -> None:
    """In-process they also held the federation's build, so fl-kd-table's wall column compared unlike times."""
    result = run_inprocess(_config(rounds=2))
    assert result.summary["wall_seconds"] == sum(float(row["wall_seconds"]) for row in result.rounds)
