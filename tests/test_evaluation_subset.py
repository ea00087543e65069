"""The per-round test subset: stratified, seeded, the same in both runtimes, and never in the last round."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kd.config import ConfigError
from fl_kd.kd.evaluation import EvaluationConfig, round_test_indices
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
    assert not np.array_equal(first, round_test_indices(LABELS, config, seed=4, round=1, last_round=5))


@pytest.mark.parametrize(("samples", "round"), [(0, 1), (95, 5), (2000, 1)])
def test_whole_test_set_when_off_in_the_last_round_or_too_large(samples: int, round: int) -> None:
    assert round_test_indices(LABELS, EvaluationConfig(test_samples=samples), seed=0, round=round, last_round=5) is None


def test_negative_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="evaluation.test_samples"):
        tiny_config(evaluation={"test_samples": -1})


def test_rounds_before_the_last_use_the_subset_and_the_last_is_exact() -> None:
    full = run_inprocess(tiny_config(rounds=2)).rounds
    sampled = run_inprocess(tiny_config(rounds=2, evaluation={"test_samples": 50})).rounds
    # Same training; only what round 1 is measured on differs. 50 samples give accuracies in steps of 1/50.
    assert sampled[1]["server_acc"] == full[1]["server_acc"]
    assert sampled[1]["client_acc_mean"] == full[1]["client_acc_mean"]
    assert (sampled[0]["server_acc"] * 50) == pytest.approx(round(sampled[0]["server_acc"] * 50))
    assert sampled[0]["server_acc"] != full[0]["server_acc"]
