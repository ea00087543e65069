"""The per-round test subset: stratified, seeded, the same in both runtimes, and never in the last round."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kd.config import ConfigError
from fl_kd.kd.evaluation import EvaluationConfig, evaluated_clients, round_test_indices
from fl_kd.kd.runner import run_inprocess
from tests.kd_configs import tiny_config

LABELS = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 200, 100, 100])


def test_subset_is_stratified_seeded_and_fixed_across_rounds() -> None:
    config = EvaluationConfig(test_samples=95)
    first = round_test_indices(LABELS, config, seed=3, round=1, last_round=5)
    assert first is not None and first.size == 95 and np.unique(first).size == 95
    np.testing.assert_array_equal(first, round_test_indices(LABELS, config, seed=3, round=4, last_round=5))
    shares = np.bincount(LABELS[first], minlength=10)
    assert abs(shares - np.bincount(LABELS) * 95 / LABELS.size).max() < 1.0
    other_seed = round_test_indices(LABELS, config, seed=4, round=1, last_round=5)
    assert other_seed is not None
    assert not np.array_equal(first, other_seed)


@pytest.mark.parametrize(("samples", "round"), [(0, 1), (95, 5), (2000, 1)])
def test_whole_test_set_when_off_in_the_last_round_or_too_large(samples: int, round: int) -> None:
    assert round_test_indices(LABELS, EvaluationConfig(test_samples=samples), seed=0, round=round, last_round=5) is None


def test_negative_size_and_empty_client_share_are_refused() -> None:
    with pytest.raises(ConfigError, match="evaluation.test_samples"):
        tiny_config(evaluation={"test_samples": -1})
    with pytest.raises(ConfigError, match="evaluation.fraction_clients"):
        tiny_config(evaluation={"fraction_clients": 0.0})


def test_evaluated_clients_are_a_seeded_sample_before_the_last_round() -> None:
    config = EvaluationConfig(fraction_clients=0.1)
    first = evaluated_clients(1000, config, seed=0, round=1, last_round=3)
    assert len(first) == 100 and first == sorted(set(first))
    assert first == evaluated_clients(1000, config, seed=0, round=1, last_round=3)
    assert first != evaluated_clients(1000, config, seed=0, round=2, last_round=3)
    assert evaluated_clients(1000, config, seed=0, round=3, last_round=3) == list(range(1000))
    assert evaluated_clients(3, EvaluationConfig(fraction_clients=0.01), 0, 1, 3) != []


def test_only_the_sampled_clients_are_evaluated_and_training_is_unchanged() -> None:
    full = run_inprocess(tiny_config(rounds=2)).rounds
    sampled = run_inprocess(tiny_config(rounds=2, evaluation={"fraction_clients": 0.25})).rounds
    # 1 of 4 clients evaluated in round 1: min = max; the last round evaluates all four exactly as before.
    assert sampled[0]["client_acc_min"] == sampled[0]["client_acc_max"]
    assert full[0]["client_acc_min"] != full[0]["client_acc_max"]
    assert {k: v for k, v in sampled[1].items() if k != "wall_seconds"} == {
        k: v for k, v in full[1].items() if k != "wall_seconds"
    }


def test_rounds_before_the_last_use_the_subset_and_the_last_is_exact() -> None:
    full = run_inprocess(tiny_config(rounds=2)).rounds
    sampled = run_inprocess(tiny_config(rounds=2, evaluation={"test_samples": 50})).rounds
    # Same training; only what round 1 is measured on differs. 50 samples give accuracies in steps of 1/50.
    assert sampled[1]["server_acc"] == full[1]["server_acc"]
    assert sampled[1]["client_acc_mean"] == full[1]["client_acc_mean"]
    assert (sampled[0]["server_acc"] * 50) == pytest.approx(round(sampled[0]["server_acc"] * 50))
    assert sampled[0]["server_acc"] != full[0]["server_acc"]
    # The last round scores the server on the subset too (the trend's scale); no other round does, nor a run
    # without a subset.
    assert "server_acc_subset" not in sampled[0] and all("server_acc_subset" not in row for row in full)
    last_on_subset = sampled[1]["server_acc_subset"]
    assert (last_on_subset * 50) == pytest.approx(round(last_on_subset * 50))
    assert last_on_subset != sampled[1]["server_acc"]


def test_the_best_round_is_read_on_one_test_set() -> None:
    """The summary's best once took the subset's 0.93 of round 3 against the whole set's final 0.9028, a fall that
    never happened: on the subset the last round (0.96) is the best."""
    from fl_kd.kd.runner import summarise

    rows = [
        {"round": 1, "server_acc": 0.60, "uplink_bytes": 1, "downlink_bytes": 1},
        {"round": 2, "server_acc": 0.93, "uplink_bytes": 1, "downlink_bytes": 1},
        {"round": 3, "server_acc": 0.9028, "server_acc_subset": 0.96, "uplink_bytes": 1, "downlink_bytes": 1},
    ]
    summary = summarise(rows, wall_seconds=1.0)
    assert summary["best_server_acc"] == 0.96 and summary["final_server_acc"] == 0.9028
    rows[-1].pop("server_acc_subset")  # a run without a subset reads every round on the whole set
    assert summarise(rows, wall_seconds=1.0)["best_server_acc"] == 0.93
