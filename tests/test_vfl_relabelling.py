"""The renaming attacker (``fl_kd.vfl.attacks.relabelling``) on hand-made guesses with a known best renaming."""

from __future__ import annotations

import pytest
import torch

from fl_kd.vfl.attacks.relabelling import RelabellingDirectLabelInference, relabelled_recovery


def test_a_pure_renaming_is_undone_entirely() -> None:
    truth = torch.tensor([0, 1, 2, 2, 0, 1])
    renamed = (truth + 1) % 3  # every class sent to the next one: raw recovery 0
    assert float((renamed == truth).double().mean()) == 0.0
    assert relabelled_recovery(renamed, truth, 3) == pytest.approx(1.0)


def test_the_best_renaming_beats_the_majority_vote_per_guess() -> None:
    # Guess 0 holds three 0s and two 1s, guess 1 two 0s, guess 2 two 2s. Naming guess 0 after its majority (0)
    # leaves guess 1 nothing: 3 + 0 + 2 = 5 of 9. The best one-to-one renaming 0 -> 1, 1 -> 0, 2 -> 2 gives 6.
    truth = torch.tensor([0, 0, 0, 1, 1, 0, 0, 2, 2])
    guesses = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2])
    assert relabelled_recovery(guesses, truth, 3) == pytest.approx(6 / 9)


def test_merged_classes_count_once() -> None:
    truth = torch.tensor([0, 1, 2, 2, 0])
    merged = torch.tensor([1, 1, 0, 0, 1])  # classes 0 and 1 both guessed as 1
    assert relabelled_recovery(merged, truth, 3) == pytest.approx(4 / 5)


def test_two_classes_give_max_of_recovery_and_its_complement() -> None:
    truth = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    guesses = torch.tensor([1, 0, 0, 1, 0, 1, 0, 1, 0, 0])  # raw recovery 0.2
    assert relabelled_recovery(guesses, truth, 2) == pytest.approx(0.8)


def test_bad_inputs_are_refused() -> None:
    truth = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="shape"):
        relabelled_recovery(truth[:2], truth, 3)
    with pytest.raises(ValueError, match="at least one sample"):
        relabelled_recovery(truth[:0], truth[:0], 3)
    with pytest.raises(ValueError, match=r"guesses must lie in \[0, 3\)"):
        relabelled_recovery(torch.tensor([0, 1, 3]), truth, 3)


def test_relabelling_dli_reports_the_renamed_recovery_beside_the_raw_one() -> None:
    # Sum-top gradients (softmax - target) / B whose most negative entry sits at the class after the true one.
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    gradient = torch.full((6, 3), 0.1)
    gradient[torch.arange(6), (labels + 1) % 3] = -0.5
    attack = RelabellingDirectLabelInference(seed=0)
    attack.on_gradient(torch.arange(6), torch.zeros(6, 3), gradient)
    result = attack.result(labels)
    assert result["recovery"] == 0.0
    assert result["recovery_up_to_permutation"] == pytest.approx(1.0)
    assert result["attack"] == "direct_label_inference"
