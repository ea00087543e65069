"""Norm scoring (NS) of received gradients, a label-inference attack on binary split learning.

Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR 2022. Under class imbalance the
model is less confident on the minority (positive) class, so positives receive gradients of larger norm; the
norm itself is a score whose ROC-AUC against the true labels is the attack performance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fl_kd.vfl.attacks._common import (
    LatestPerSample,
    check_binary,
    check_labels,
    check_observation,
    labels_of,
    score_result,
)
from fl_kd.vfl.hooks import FeaturePartyAttack


class NormScoring(FeaturePartyAttack):
    """Score each sample by the L2 norm of its last received gradient; AP is the ROC-AUC of that score.

    The attacker needs no prior knowledge. The score is meaningful for binary tasks only.
    """

    name = "norm_scoring"
    binary_only = True
    attack_type = "LI"

    def __init__(self) -> None:
        self._scores = LatestPerSample()

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        check_observation(sample_ids, embedding, gradient)
        self._scores.update(sample_ids, gradient.detach().to(torch.float64).norm(dim=1))

    def result(self, labels: Tensor) -> dict[str, Any]:
        """ROC-AUC of the norm score against binary labels ``(N,)`` indexed by sample id."""
        labels = check_labels(labels)
        check_binary(labels, self.name)
        ids, scores = self._scores.items()
        return score_result(self.name, self.attack_type, labels_of(ids, labels), scores)
