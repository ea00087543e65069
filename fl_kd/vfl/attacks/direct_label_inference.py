"""Direct label inference (DLI) from the sign pattern of the received gradient.

Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR 2022, and the
``DirectLabelScoring`` attack of VFLAIR (Zou et al., ICLR 2024). With cross-entropy and a non-trainable
sum/softmax top, the gradient of the loss w.r.t. a feature party's logits is ``(softmax(z) - y) / B``: every
entry is positive except the one of the true class. The attacker reads that index off each row.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fl_kd.vfl.attacks._common import LatestPerSample, check_labels, check_observation, labels_of
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import attack_performance


class DirectLabelInference(FeaturePartyAttack):
    """Guess each sample's label as the index of the smallest entry of its gradient.

    On an undefended gradient the true class holds the only negative entry. A defence may leave several
    (soft or noisy targets): the attacker then takes the most negative one, the class whose target most
    exceeds the prediction. On a confidently classified sample float32 rounds ``softmax - 1`` to exactly 0,
    leaving no negative entry, yet the true class still holds the unique minimum; VFLAIR guesses at random
    there, we keep the minimum. Only ties for the minimum (e.g. a row zeroed by sparsification) carry no
    information and get a seeded uniform guess among the tied classes. Only the last observation of each
    sample id is scored.

    Parameters
    ----------
    seed : int (default: 0)
        Seed of the random tie-breaking.

    Notes
    -----
    The attacker's embedding must be its logits, ``D = C`` (a sum top); ``result`` raises otherwise.
    """

    name = "direct_label_inference"
    sum_top_only = True
    attack_type = "LI"

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)
        self._guesses = LatestPerSample()
        self._width: int | None = None

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        check_observation(sample_ids, embedding, gradient)
        gradient = gradient.detach().to("cpu", torch.float32)
        self._width = gradient.shape[1]
        tied = gradient == gradient.min(dim=1, keepdim=True).values
        # A random key per entry, kept only where the row attains its minimum: argmax picks uniformly
        # among the tied classes and is the plain argmin when the minimum is unique.
        keys = torch.rand(gradient.shape, generator=self._generator) + 1.0
        self._guesses.update(sample_ids, (keys * tied).argmax(dim=1))

    def result(self, labels: Tensor) -> dict[str, Any]:
        """Recovery rate over the observed samples, with its adaptive AP.

        Parameters
        ----------
        labels : Tensor
            True training labels ``(N,)`` indexed by sample id.
        """
        labels = check_labels(labels)
        if self._width is None:
            raise ValueError("direct_label_inference observed no gradient")
        if labels.numel() and int(labels.max()) >= self._width:
            raise ValueError(
                f"direct_label_inference needs the party's embedding to be its logits (width = number of "
                f"classes), but the embedding width is {self._width} and labels go up to {int(labels.max())}"
            )
        ids, guesses = self._guesses.items()
        recovery = float((guesses == labels_of(ids, labels)).double().mean())
        return {
            "attack": self.name,
            "attack_type": self.attack_type,
            "recovery": recovery,
            "num_samples": int(ids.numel()),
            **attack_performance(recovery, self._width),
        }
