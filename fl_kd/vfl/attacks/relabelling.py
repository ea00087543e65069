"""The renaming attacker: label recovery after the best one-to-one renaming of the guessed classes.

A defence that sends every class to another fixed class, as the encoder of CoAE does (Zou, Liu et al.,
"Defending Batch-Level Label Inference and Replacement Attacks in Vertical Federated Learning", IEEE TBD 2022),
drives the raw recovery of a label-inference attack below chance, yet leaves the classes apart: an attacker who
knows one label per class can undo the renaming. :func:`relabelled_recovery` measures the upper bound of that
adaptation (Hungarian matching of guesses to classes); :class:`RelabellingDirectLabelInference` is direct label
inference that reports it beside its raw recovery.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fl_kd.vfl.attacks._common import check_labels, labels_of
from fl_kd.vfl.attacks.direct_label_inference import DirectLabelInference

#: The key under which :class:`RelabellingDirectLabelInference` reports :func:`relabelled_recovery`.
RELABELLED_KEY = "recovery_up_to_permutation"


def relabelled_recovery(guesses: Tensor, truth: Tensor, num_classes: int) -> float:
    """Share of samples recovered after the best one-to-one renaming of the guessed classes.

    For two classes it equals ``max(r, 1 - r)`` of the raw recovery ``r``; a renaming that merges classes cannot be
    undone, so merged classes count once.

    Parameters
    ----------
    guesses : Tensor
        Guessed labels, int ``(N,)`` in ``[0, num_classes)``.
    truth : Tensor
        True labels, int ``(N,)`` in ``[0, num_classes)``.
    num_classes : int
        Number of classes ``C``.

    Returns
    -------
    float
        The recovery rate in ``[0, 1]`` under the renaming ``C -> C`` that maximises it.
    """
    if guesses.shape != truth.shape or guesses.dim() != 1:
        raise ValueError(
            f"guesses and truth must be (N,) of one shape, got {tuple(guesses.shape)}, {tuple(truth.shape)}"
        )
    if truth.numel() == 0:
        raise ValueError("relabelled_recovery needs at least one sample")
    guessed, true = guesses.detach().cpu().numpy(), truth.detach().cpu().numpy()
    for name, values in (("guesses", guessed), ("truth", true)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{values.min()}, {values.max()}]")
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (guessed, true), 1.0)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / truth.numel())


class RelabellingDirectLabelInference(DirectLabelInference):
    """Direct label inference that also reports :func:`relabelled_recovery` under ``recovery_up_to_permutation``.

    It observes exactly as :class:`~fl_kd.vfl.attacks.direct_label_inference.DirectLabelInference` (and runs under
    its name); only :meth:`result` adds the renaming attacker's figure.

    Parameters
    ----------
    num_classes : int | None (default: None)
        Number of classes; None takes the width of the observed gradients, which direct label inference needs to
        equal the number of classes.
    seed : int (default: 0)
        Seed of the random tie-breaking.
    """

    def __init__(self, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.num_classes = num_classes

    def result(self, labels: Tensor) -> dict[str, Any]:
        """The result of direct label inference plus ``recovery_up_to_permutation``.

        Parameters
        ----------
        labels : Tensor
            True training labels ``(N,)`` indexed by sample id.
        """
        out = super().result(labels)
        ids, guesses = self._guesses.items()
        truth = labels_of(ids, check_labels(labels))
        num_classes = self.num_classes if self.num_classes is not None else self._width
        assert num_classes is not None  # the parent's result raises when no gradient was observed
        out[RELABELLED_KEY] = relabelled_recovery(guesses.to(torch.int64), truth.to(torch.int64), num_classes)
        return out
