"""VFLAIR metrics (DCS, T-DCS, C-DCS), adaptive AP and main-task performance against hand computations."""

import math

import numpy as np
import pytest
import torch

from fl_kd.vfl.metrics import (
    adaptive_ap,
    attack_performance,
    attack_type,
    below_chance,
    c_dcs,
    dcs,
    defence_scores,
    main_task_performance,
    t_dcs,
    t_dcs_by_type,
)


def test_dcs_privacy_gap_only() -> None:
    # AP 0.5 above AP* = 0 with no utility loss: sqrt((1 - 0.5) * 0.5^2).
    assert dcs(ap=0.5, mp=0.9, mp_star=0.9) == pytest.approx(1 / (1 + math.sqrt(0.5 * 0.25)))


def test_dcs_both_gaps() -> None:
    # privacy gap 0.3, utility gap 0.1: sqrt(0.5 * 0.09 + 0.5 * 0.01) = sqrt(0.05).
    assert dcs(ap=0.3, mp=0.8, mp_star=0.9) == pytest.approx(1 / (1 + math.sqrt(0.05)))


def test_dcs_ignores_gains_and_respects_ap_star_and_beta() -> None:
    assert dcs(ap=0.1, mp=0.95, mp_star=0.9, ap_star=0.2) == 1.0
    # beta = 1 weights utility only: 1 / (1 + 0.2).
    assert dcs(ap=1.0, mp=0.7, mp_star=0.9, beta=1.0) == pytest.approx(1 / 1.2)
    # beta = 0 weights privacy only: 1 / (1 + 0.6 - 0.1).
    assert dcs(ap=0.6, mp=0.0, mp_star=0.9, ap_star=0.1, beta=0.0) == pytest.approx(1 / 1.5)


def test_dcs_rejects_beta_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="beta"):
        dcs(0.5, 0.9, 0.9, beta=1.5)


def test_t_dcs_is_mean_and_needs_values() -> None:
    assert t_dcs([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        t_dcs([])


def test_t_dcs_by_type_groups_our_attacks_as_label_inference() -> None:
    grouped = t_dcs_by_type({"direct_label_inference": 0.4, "batch_label_inference": 0.8, "norm_scoring": 0.6})
    assert grouped == {"LI": pytest.approx(0.6)}


def test_attack_type_lookup() -> None:
    assert attack_type("passive_model_completion") == "LI"
    with pytest.raises(ValueError, match="unknown attack"):
        attack_type("not_an_attack")
    with pytest.raises(ValueError, match="no VFLAIR attack type"):
        attack_type("none")


def test_c_dcs_equal_weights_over_present_types() -> None:
    assert c_dcs({"LI": 0.6, "TB": 0.8}) == pytest.approx(0.7)
    assert c_dcs({"LI": 0.6}) == pytest.approx(0.6)


def test_c_dcs_with_weights() -> None:
    assert c_dcs({"LI": 0.6, "TB": 0.8}, weights={"LI": 0.25, "TB": 0.75}) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("values", "weights", "message"),
    [
        ({"LI": 0.6, "TB": 0.8}, {"LI": 0.5, "TB": 0.6}, "sum to 1"),
        ({"LI": 0.6, "TB": 0.8}, {"LI": 1.0}, "lack"),
        ({"XX": 0.6}, None, "unknown attack types"),
        ({}, None, "at least one"),
    ],
)
def test_c_dcs_rejects_bad_input(values: dict, weights: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        c_dcs(values, weights)


def test_adaptive_ap_binary_flips_and_multiclass_keeps() -> None:
    assert adaptive_ap(0.0, 2) == 1.0
    assert adaptive_ap(0.3, 2) == pytest.approx(0.7)
    assert adaptive_ap(0.8, 2) == pytest.approx(0.8)
    assert adaptive_ap(0.05, 10) == pytest.approx(0.05)


def test_below_chance() -> None:
    assert below_chance(0.02, 10) == pytest.approx(0.08)
    assert below_chance(0.5, 10) == 0.0
    assert attack_performance(0.1, 2) == {"ap": 0.1, "ap_adaptive": pytest.approx(0.9), "below_chance": 0.4}
    with pytest.raises(ValueError, match="num_classes"):
        adaptive_ap(0.5, 1)


def test_main_task_performance_binary_by_hand() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 0])
    result = main_task_performance(probabilities, labels)
    # predictions 0, 1, 0, 1 -> two right;
    # AUC: positives (0.8, 0.4) beat negatives (0.1, 0.7) in 3 of 4 pairs.
    assert result == {"accuracy": 0.5, "auc": pytest.approx(0.75)}


def test_main_task_performance_multiclass_has_no_auc() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert main_task_performance(probabilities, np.array([1, 2, 2])) == {"accuracy": pytest.approx(2 / 3)}


def test_main_task_performance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="probabilities must be"):
        main_task_performance(torch.ones(3, 2) / 2, torch.zeros(4, dtype=torch.int64))


def test_the_type_and_combined_scores_count_the_attacker_who_knows_the_defence() -> None:
    """A defence that flips every guess (raw AP 0, adaptive AP 1) once scored as a near-perfect defence in C-DCS."""
    results = {"mp": 0.9, "attacks": {"batch_label_inference": {"ap": 0.0, "ap_adaptive": 1.0}}}
    scores = defence_scores(results, mp_star=0.9)
    leak = 1 / (1 + math.sqrt(0.5))
    assert scores["t_dcs"] == {"LI": pytest.approx(leak)} and scores["c_dcs"] == pytest.approx(leak)
    assert scores["t_dcs_raw"] == {"LI": 1.0} and scores["c_dcs_raw"] == 1.0
