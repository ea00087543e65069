"""Local-only clients, transfer-only server and weight-sharing payload sizes on a tiny digits federation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fl_kd.data import DatasetSplits, load_dataset
from fl_kd.kd.baselines import local_only_round, model_weight_nbytes, run_local_only, run_transfer_only_server
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_client, build_federation, sample_clients
from fl_kd.kd.runner import run_inprocess
from tests.kd_configs import tiny_config

PROFILE: dict[str, Any] = {
    "name": "tiny_two_tier",
    "server_model": "cnn_small",
    "tiers": {
        "low": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "high": {"model": "cnn_small", "share": 0.5, "local_epochs": 2, "batch_size": 32, "lr": 0.05},
    },
}


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def distilled(digits: DatasetSplits) -> list[dict[str, Any]]:
    """Rounds of the reference runner (selective distillation) on the default test config."""
    return run_inprocess(_config(), data=digits).rounds


def _without_time(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rounds]


def test_local_only_is_deterministic_and_seed_dependent(digits: DatasetSplits) -> None:
    first = run_local_only(_config(), data=digits)
    second = run_local_only(_config(), data=digits)
    assert [r["round"] for r in first] == [1, 2]
    assert _without_time(first) == _without_time(second)
    assert _without_time(first) != _without_time(run_local_only(_config(seed=12), data=digits))


def test_local_only_reports_the_runners_client_keys_and_sends_nothing(
    digits: DatasetSplits, distilled: list[dict[str, Any]]
) -> None:
    seen: list[dict[str, Any]] = []
    local = run_local_only(_config(rounds=1), data=digits, on_round=seen.append)
    assert seen == local
    runner_keys = set(distilled[0])
    client_keys = {k for k in runner_keys if k.startswith(("client_acc", "client_pacc"))}
    assert {k for k in local[0] if k.startswith(("client_acc", "client_pacc"))} == client_keys
    # Per tier and overall, for both test sets: 2 x 3 x 3 keys.
    assert len(client_keys) == 18
    assert set(local[0]) == client_keys | {"round", "uplink_bytes", "downlink_bytes", "wall_seconds"}
    assert local[0]["uplink_bytes"] == local[0]["downlink_bytes"] == 0
    for prefix in ("client_acc", "client_pacc"):
        for tier in ("", "_low", "_high"):
            assert 0.0 <= local[0][f"{prefix}{tier}_min"] <= local[0][f"{prefix}{tier}_max"] <= 1.0


def test_only_sampled_clients_train(digits: DatasetSplits) -> None:
    cfg = _config(fraction_fit=0.5)
    federation = build_federation(cfg, digits)
    clients = [build_client(cfg, federation, k) for k in range(federation.num_clients)]
    before = [client.state_dict()["model"] for client in clients]
    selected = sample_clients(federation.num_clients, cfg.strategy.fraction_fit, cfg.seed, round=1)
    assert len(selected) == 2
    local_only_round(cfg, 1, federation, clients)
    for client, weights in zip(clients, before, strict=True):
        after = client.state_dict()["model"]
        unchanged = all(np.array_equal(weights[k].numpy(), after[k].numpy()) for k in weights)
        assert unchanged == (client.client_id not in selected)


def test_transfer_only_server_learns_from_labels_alone(digits: DatasetSplits, distilled: list[dict[str, Any]]) -> None:
    cfg = _config()
    alone = run_transfer_only_server(cfg, data=digits)
    assert _without_time(alone) == _without_time(run_transfer_only_server(cfg, data=digits))
    for metrics in alone:
        assert metrics["n_clients"] == 0 and metrics["uplink_bytes"] == metrics["downlink_bytes"] == 0
        assert metrics["n_self"] + metrics["n_cache"] + metrics["n_ce_only"] == 60
        assert 0.0 <= metrics["server_acc"] <= 1.0
    assert alone[-1]["cache_size"] >= alone[0]["cache_size"] > 0
    # Same server, seeds and transfer set: wherever clients taught some samples, the server's loss must differ.
    assert distilled[0]["n_clients"] > 0
    assert distilled[0]["server_loss"] != alone[0]["server_loss"]


def test_model_weight_nbytes_by_hand(digits: DatasetSplits) -> None:
    cfg = _config()
    federation = build_federation(cfg, digits)
    # Digits are (1, 8, 8) with 10 classes. cnn_tiny = Conv(1->8, 3x3, no bias) + GroupNorm(8) + Conv(8->16) +
    # GroupNorm(16) + Linear(16 * 2 * 2 -> 10):
    tiny = (1 * 8 * 9) + 2 * 8 + (8 * 16 * 9) + 2 * 16 + (16 * 4 * 10 + 10)
    # cnn_small: the same with widths 16 and 32.
    small = (1 * 16 * 9) + 2 * 16 + (16 * 32 * 9) + 2 * 32 + (32 * 4 * 10 + 10)
    assert (tiny, small) == (1922, 6138)
    expected = {k: 4 * (tiny if tier.name == "low" else small) for k, tier in enumerate(federation.tiers)}
    assert model_weight_nbytes(cfg, federation) == expected
    assert sorted(expected.values()) == [4 * tiny, 4 * tiny, 4 * small, 4 * small]
    with pytest.raises(ValueError, match="clients"):
        model_weight_nbytes(_config(num_clients=5), federation)


def _config(**overrides: Any) -> ExperimentConfig:
    return tiny_config(**({"device_profile": PROFILE} | overrides))


def test_pseudo_label_server_trains_on_its_confident_guesses(digits: DatasetSplits) -> None:
    from fl_kd.kd.baselines import run_pseudo_label_server

    cfg = tiny_config(rounds=3, transfer={"labelled": 60, "unlabelled": 80}, unlabelled_per_round=50)
    everything = run_pseudo_label_server(cfg, digits, threshold=0.0)
    assert [row["n_pseudo"] for row in everything] == [50, 50, 50]  # threshold 0 takes every guess
    assert all(0.0 <= row["pseudo_label_accuracy"] <= 1.0 for row in everything)
    none = run_pseudo_label_server(cfg, digits, threshold=1.0)
    assert all(row["n_pseudo"] == 0 and np.isnan(row["pseudo_label_accuracy"]) for row in none)  # not 0.0
    assert _without_time(run_pseudo_label_server(cfg, digits, threshold=0.0)) == _without_time(everything)
    # Guesses change what the server learns, so the two thresholds part after the first round.
    assert everything[-1]["server_loss"] != none[-1]["server_loss"]
    with pytest.raises(ValueError, match="threshold"):
        run_pseudo_label_server(cfg, digits, threshold=1.5)


def test_pseudo_label_and_transfer_only_servers_take_the_weight_average(digits: DatasetSplits) -> None:
    """``server_ema`` reaches both baselines, so they train their server exactly as FedGEMS does."""
    from fl_kd.kd.baselines import run_pseudo_label_server

    def final(run: Any, ema: float) -> list[dict[str, Any]]:
        transfer = {"labelled": 60, "unlabelled": 80}
        cfg = tiny_config(rounds=2, transfer=transfer, unlabelled_per_round=50, server_ema=ema)
        return _without_time(run(cfg, digits))

    for run in (run_pseudo_label_server, run_transfer_only_server):
        plain, averaged = final(run, 0.0), final(run, 0.9)
        # Training is the same (same losses); only the shown model, and so the accuracy, differs.
        assert plain[0]["server_loss"] == averaged[0]["server_loss"]
        assert [r["server_acc"] for r in plain] != [r["server_acc"] for r in averaged]
        assert final(run, 0.9) == averaged


def test_the_server_alone_baselines_score_their_last_round_on_the_subset_too(digits: DatasetSplits) -> None:
    """Their best round was read on the subset and their last on the whole test set, beside FedGEMS' on one set."""
    from fl_kd.kd.baselines import run_pseudo_label_server

    transfer = {"labelled": 60, "unlabelled": 80}
    cfg = tiny_config(rounds=2, transfer=transfer, unlabelled_per_round=50, evaluation={"test_samples": 60})
    for run in (run_pseudo_label_server, run_transfer_only_server):
        first, last = run(cfg, digits)
        assert "server_acc_subset" not in first and 0.0 <= last["server_acc_subset"] <= 1.0
        # Scored on the 60-image subset (a multiple of 1/60), as round 1 was, not on the whole test set.
        for row in (first, last):
            figure = row["server_acc_subset"] if row is last else row["server_acc"]
            assert figure * 60 == pytest.approx(round(figure * 60))
        assert last["server_acc_subset"] != last["server_acc"]
