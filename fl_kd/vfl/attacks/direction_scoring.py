"""Direction scoring (DS) of received gradients, a label-inference attack on binary split learning.

Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR 2022. With cross-entropy,
gradients of same-class samples in one batch point in nearly the same direction and those of opposite
classes in opposite directions, so the cosine similarity to the gradient of one known positive is a label
score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
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


class DirectionScoring(FeaturePartyAttack):
    """Score each sample by the cosine of its gradient with a known positive's gradient; AP is the ROC-AUC.

    Attacker knowledge: a few training samples known to be positive (label 1), either given as ids or, when
    the harness cannot know the ids in advance (e.g. the training set is subsampled inside the run),
    ``num_known`` positives drawn with ``seed`` from the labels passed to ``result``. Each sample is scored on
    its last received gradient against the mean last gradient of the known positives of the same batch; when
    that batch held none, the nearest earlier batch that did (or else the nearest later one) gives the
    reference. The known positives themselves are left out of the AUC.

    Parameters
    ----------
    known_positive_ids : Sequence[int] | None (default: None)
        Ids of training samples the attacker knows to be positive.
    num_known : int (default: 1)
        Known positives to draw when ``known_positive_ids`` is ``None``.
    seed : int (default: 0)
        Seed of that draw.
    """

    name = "direction_scoring"
    binary_only = True
    attack_type = "LI"

    def __init__(self, known_positive_ids: Sequence[int] | None = None, num_known: int = 1, seed: int = 0) -> None:
        self._given: Tensor | None = None
        if known_positive_ids is not None:
            self._given = torch.as_tensor(list(known_positive_ids), dtype=torch.int64)
            if self._given.numel() == 0:
                raise ValueError("direction_scoring needs at least one known positive sample id")
            if (num_known, seed) != (1, 0):  # they draw the known positives, which the given ids replace
                raise ValueError("num_known and seed draw the known positives: give them or known_positive_ids")
        if num_known < 1:
            raise ValueError(f"num_known must be at least 1, got {num_known}")
        self.num_known, self.seed = num_known, seed
        self._gradients = LatestPerSample()
        self._batch_index = LatestPerSample()
        self._num_batches = 0

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        check_observation(sample_ids, embedding, gradient)
        self._gradients.update(sample_ids, gradient.detach().to(torch.float32))
        self._batch_index.update(sample_ids, torch.full((sample_ids.shape[0],), self._num_batches))
        self._num_batches += 1

    def known_positives(self, labels: Tensor) -> Tensor:
        """Ids ``(K,)`` of the positives the attacker knows: the given ids, or a seeded draw from labels."""
        if self._given is not None:
            return self._given
        positives = torch.nonzero(check_labels(labels) == 1).flatten().numpy()
        if positives.size < self.num_known:
            raise ValueError(f"cannot draw {self.num_known} known positives from {positives.size} positives")
        drawn = np.random.default_rng(self.seed).choice(positives, size=self.num_known, replace=False)
        return torch.as_tensor(np.sort(drawn), dtype=torch.int64)

    def result(self, labels: Tensor) -> dict[str, Any]:
        """ROC-AUC of the direction score against binary labels ``(N,)`` indexed by sample id."""
        labels = check_labels(labels)
        check_binary(labels, self.name)
        ids, gradients = self._gradients.items()
        _, batch = self._batch_index.items()
        is_known = torch.isin(ids, self.known_positives(labels))
        if not is_known.any():
            raise ValueError("direction_scoring never observed a gradient of a known positive sample")
        reference_batches = batch[is_known].unique()  # sorted
        references = torch.stack([gradients[is_known & (batch == b)].mean(dim=0) for b in reference_batches.tolist()])
        nearest_earlier = torch.searchsorted(reference_batches, batch, right=True) - 1
        scores = torch.nn.functional.cosine_similarity(
            gradients.double(), references[nearest_earlier.clamp_min(0)].double(), dim=1
        )
        return score_result(self.name, self.attack_type, labels_of(ids[~is_known], labels), scores[~is_known])
