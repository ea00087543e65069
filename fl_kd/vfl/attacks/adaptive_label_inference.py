"""Adaptive direct label inference: either sign of the gradient, renamed by a few known labels, at every epoch.

Direct label inference reads the most negative entry of each per-sample gradient of the attacker's logits, the
class whose target most exceeds the prediction. A defence that trains on a confused target (CoAE's encoder puts
~0 on the true class and ~0.1 on the others) makes the true class stand out with the *other* sign, and one that
maps each class to another fixed class renames the guesses. An attacker who knows the defence and a few labels
reads both signs, renames the guesses to fit the known labels, and keeps the reading that fits them best.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_kd.vfl.attacks.adaptive import EpochwiseAttack, fit_relabelling, orient


class AdaptiveLabelInference(EpochwiseAttack):
    """Argmin or argmax of each gradient, with the renaming fitted on the known labels; every epoch scored.

    Per epoch the attacker forms both readings (argmin, argmax), fits to each the one-to-one renaming of guessed
    classes that best matches the known labels (:func:`~fl_kd.vfl.attacks.adaptive.fit_relabelling`), and keeps
    the reading that fits the known labels best (argmin on a tie). On a binary task the score of class 1 is
    ``g_0 - g_1`` (argmin reading), turned round when the known labels say so, and AP is its ROC-AUC.

    Parameters
    ----------
    known_labels : int | None (default: None)
        Training labels the attacker knows; None: 40 on a multi-class task, 4 on a binary one. Never scored.
    num_classes : int | None (default: None)
        Number of classes; None takes it from the labels passed to ``result``.
    seed : int (default: 0)
        Seed of the known-label draw.
    average_epochs : bool (default: True)
        Also read each sample's gradients averaged over the first ``e`` epochs (fresh noise averages out).

    Notes
    -----
    As for direct label inference, the attacker's embedding must be its logits, ``D = C`` (a sum top).
    """

    name = "adaptive_label_inference"
    sum_top_only = True

    def predict(self, gradients: Tensor, is_known: Tensor, known_truth: Tensor, num_classes: int) -> tuple[Tensor, str]:
        if gradients.shape[1] != num_classes:
            raise ValueError(
                f"{self.name} needs the party's embedding to be its logits (width = number of classes), "
                f"but the embedding width is {gradients.shape[1]} for {num_classes} classes"
            )
        if num_classes == 2:
            score = gradients[:, 0] - gradients[:, 1]
            oriented = orient(score, is_known, known_truth)
            return oriented, "argmin" if oriented is score else "argmax"
        best: tuple[float, Tensor, str] | None = None
        for sign, raw in (("argmin", gradients.argmin(dim=1)), ("argmax", gradients.argmax(dim=1))):
            mapping = fit_relabelling(raw[is_known], known_truth, num_classes)
            guesses = mapping[raw]
            fit = float((guesses[is_known] == known_truth).double().mean()) if known_truth.numel() else 0.0
            renamed = bool((mapping != torch.arange(num_classes)).any())
            if best is None or fit > best[0]:
                best = (fit, guesses, f"{sign}, renamed" if renamed else sign)
        assert best is not None
        return best[1], best[2]
