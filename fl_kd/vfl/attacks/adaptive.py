"""What an adaptive attacker keeps and knows: every epoch's gradients, a few known labels, and the scoring of both.

An attacker that adapts to the defence (see ``docs/methods.md`` of the shared docs, section 1.7) uses every
epoch's per-sample gradients, not only the last (early gradients are large and least distorted by a converging top
model), and the labels of a few training samples (its own customers, public records) to fit whatever fixed
relabelling or orientation of its guesses the defence calls for. :class:`EpochwiseAttack` holds that machinery; a
subclass only says how one epoch's gradients become guesses (several classes) or a score (two classes).

Scoring: each epoch is scored on the samples whose labels the attacker does not know (known labels are never
scored). ``ap`` is the AP of the reading (an epoch, or a running average) the attacker picks by its fit to the
known labels, the only labels it has. ``ap_oracle`` is the best reading's AP, picked with the scored samples' own
labels: an upper bound no attacker can choose, which on a small binary task reads as a leak where there is none (the
best of 29 readings of pure noise scores about 0.56 on 455 samples).

With ``average_epochs`` the attacker also reads each sample's gradient averaged over the first ``e`` epochs
(``e = 2 .. E``): a defence that draws fresh noise every epoch (Gaussian, Marvell) loses ``sqrt(e)`` of its noise
that way, while the label signal stays. These readings compete with the single epochs for the best AP.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score
from torch import Tensor

from fl_kd.vfl.attacks._common import LatestPerSample, check_labels, check_observation, labels_of
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import adaptive_ap, attack_performance

#: Known labels of an attacker by default: four per class on ten classes, two per class on a binary task.
DEFAULT_KNOWN_MULTICLASS = 40
DEFAULT_KNOWN_BINARY = 4


def default_known_labels(num_classes: int) -> int:
    """The default count of known labels: 40 for a multi-class task, 4 for a binary one."""
    return DEFAULT_KNOWN_BINARY if num_classes == 2 else DEFAULT_KNOWN_MULTICLASS


def draw_known(labels: Tensor, count: int, num_classes: int, seed: int) -> Tensor:
    """Seeded, class-balanced ids ``(K,)`` of training samples whose labels the attacker knows.

    ``max(1, count // num_classes)`` per class, drawn exactly as
    :meth:`~fl_kd.vfl.attacks.model_completion.PassiveModelCompletion.known_indices` draws them, so the same
    ``count`` and ``seed`` give model completion the same known samples.
    """
    rng = np.random.default_rng(seed)
    per_class = max(1, count // num_classes)
    picked = [np.zeros(0, dtype=np.int64)]
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten().numpy()
        if members.size:
            picked.append(rng.choice(members, size=min(per_class, members.size), replace=False))
    return torch.as_tensor(np.sort(np.concatenate(picked)), dtype=torch.int64)


def fit_relabelling(guesses: Tensor, truth: Tensor, num_classes: int) -> Tensor:
    """The one-to-one renaming ``(C,)`` of guessed classes that best fits a few known ``(guess, truth)`` pairs.

    Hungarian matching on the counts, as :func:`~fl_kd.vfl.attacks.relabelling.relabelled_recovery` does on all
    labels; a guessed class no known sample tells about keeps its own name where it can (a tiny bonus on the
    identity breaks ties), so without evidence the renaming is the identity.
    """
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (guesses.numpy(), truth.numpy()), 1.0)
    counts += 1e-6 * np.eye(num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.arange(num_classes)
    mapping[rows] = cols
    return torch.as_tensor(mapping, dtype=torch.int64)


def orient(scores: Tensor, is_known: Tensor, known_truth: Tensor) -> Tensor:
    """``scores`` or ``-scores``, whichever puts the known positives above the known negatives on average."""
    positives, negatives = scores[is_known][known_truth == 1], scores[is_known][known_truth == 0]
    if positives.numel() and negatives.numel() and positives.mean() < negatives.mean():
        return -scores
    return scores


class EpochGradients:
    """Every epoch's latest gradient ``(D,)`` per sample id.

    The hook is not told when an epoch starts; each sample is seen once per epoch, so a batch holding a sample
    already seen opens the next epoch.
    """

    def __init__(self) -> None:
        self.epochs: list[LatestPerSample] = []
        self._seen = torch.zeros(0, dtype=torch.bool)

    def update(self, sample_ids: Tensor, gradient: Tensor) -> None:
        """Record one batch: ids ``(B,)`` and gradients ``(B, D)``."""
        ids = sample_ids.detach().to("cpu", torch.int64)
        if ids.numel() == 0:
            return
        needed = int(ids.max()) + 1
        if needed > self._seen.numel():
            grown = torch.zeros(max(needed, 2 * self._seen.numel()), dtype=torch.bool)
            grown[: self._seen.numel()] = self._seen
            self._seen = grown
        if not self.epochs or bool(self._seen[ids].any()):
            self.epochs.append(LatestPerSample())
            self._seen.zero_()
        self._seen[ids] = True
        self.epochs[-1].update(ids, gradient.detach().to("cpu", torch.float32))


class EpochwiseAttack(FeaturePartyAttack):
    """A label-inference attack scored on every epoch's gradients with a few known labels.

    Parameters
    ----------
    known_labels : int | None (default: None)
        Training labels the attacker knows, drawn class-balanced with ``seed`` (:func:`draw_known`); None: 40 on a
        multi-class task, 4 on a binary one. They fit the attacker's choices and are never scored.
    num_classes : int | None (default: None)
        Number of classes; None takes ``max(label) + 1`` of the labels passed to ``result``.
    seed : int (default: 0)
        Seed of the known-label draw and of any randomness of the attack.
    average_epochs : bool (default: True)
        Also read each sample's gradients averaged over the first ``e`` epochs (see the module docstring).
    """

    attack_type = "LI"

    def __init__(
        self,
        known_labels: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        average_epochs: bool = True,
    ) -> None:
        if known_labels is not None and known_labels < 1:
            raise ValueError(f"known_labels must be at least 1, got {known_labels}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.known_labels, self.num_classes, self.seed = known_labels, num_classes, seed
        self.average_epochs = average_epochs
        self._store = EpochGradients()

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        check_observation(sample_ids, embedding, gradient)
        self._store.update(sample_ids, gradient)

    def predict(self, gradients: Tensor, is_known: Tensor, known_truth: Tensor, num_classes: int) -> tuple[Tensor, str]:
        """One epoch's guesses ``(M,)`` (int; or, for two classes, a float score of class 1) and how they came.

        ``gradients`` ``(M, D)`` are the epoch's; ``known_truth`` holds the labels of the rows ``is_known`` only.
        """
        raise NotImplementedError

    def result(self, labels: Tensor) -> dict[str, Any]:
        """AP of the reading the known labels pick, on the samples whose labels the attacker does not know, with
        every reading's figures and the oracle's best.

        AP is the recovery rate on a multi-class task and the ROC-AUC of the attack's score on a binary one.
        """
        labels = check_labels(labels)
        if not self._store.epochs:
            raise ValueError(f"{self.name} observed no gradient")
        num_classes = self.num_classes or max(int(labels.max()) + 1, 2)
        if int(labels.max()) >= num_classes:
            raise ValueError(f"labels go up to {int(labels.max())} but num_classes is {num_classes}")
        count = self.known_labels or default_known_labels(num_classes)
        known = draw_known(labels, count, num_classes, self.seed)

        def score(epoch: int, ids: Tensor, gradients: Tensor) -> dict[str, Any]:
            truth = labels_of(ids, labels)
            is_known = torch.isin(ids, known)
            guesses, choice = self.predict(gradients, is_known, truth[is_known], num_classes)
            return {
                "epoch": epoch,
                "ap": _ap(guesses[~is_known], truth[~is_known], num_classes),
                "known_fit": _known_fit(guesses[is_known], truth[is_known], num_classes),
                "choice": choice,
                "num_samples": int((~is_known).sum()),
                "num_known": int(is_known.sum()),
            }

        per_epoch = [score(epoch, *store.items()) for epoch, store in enumerate(self._store.epochs, start=1)]
        per_average = []
        if self.average_epochs:
            for epochs, (ids, mean) in enumerate(_running_means(self._store.epochs)[1:], start=2):
                per_average.append({**score(epochs, ids, mean), "averaged_epochs": epochs})
        candidates = per_epoch + per_average
        selected = max(candidates, key=lambda row: row["known_fit"])  # the earliest of equal fits
        # Read with the labels the attacker lacks: reported beside, never as, its AP.
        oracle = max(candidates, key=lambda row: adaptive_ap(row["ap"], num_classes))
        return {
            "attack": self.name,
            "attack_type": self.attack_type,
            "epoch": selected["epoch"],
            "choice": selected["choice"],
            "ap_oracle": adaptive_ap(oracle["ap"], num_classes),
            "epoch_oracle": oracle["epoch"],
            "num_known": selected["num_known"],
            "num_samples": selected["num_samples"],
            "averaged_epochs": selected.get("averaged_epochs", 1),
            "per_epoch": per_epoch,
            "per_average": per_average,
            **attack_performance(selected["ap"], num_classes),
        }


def _running_means(epochs: list[LatestPerSample]) -> list[tuple[Tensor, Tensor]]:
    """Per ``e``: the ids seen in each of the first ``e`` epochs and their gradients averaged over those epochs."""
    means: list[tuple[Tensor, Tensor]] = []
    total: Tensor | None = None
    count: Tensor | None = None
    for store in epochs:
        ids, gradients = store.items()
        size = int(ids.max()) + 1 if ids.numel() else 0
        if total is None or count is None:
            total = torch.zeros(size, gradients.shape[1], dtype=torch.float64)
            count = torch.zeros(size, dtype=torch.int64)
        if size > total.shape[0]:
            total = torch.cat([total, torch.zeros(size - total.shape[0], total.shape[1], dtype=torch.float64)])
            count = torch.cat([count, torch.zeros(size - count.shape[0], dtype=torch.int64)])
        total[ids] += gradients.double()
        count[ids] += 1
        every = torch.nonzero(count == len(means) + 1).flatten()
        means.append((every, (total[every] / count[every].unsqueeze(1)).to(torch.float32)))
    return means


def _ap(guesses: Tensor, truth: Tensor, num_classes: int) -> float:
    if truth.numel() == 0:
        raise ValueError("no sample is left to score once the known labels are set aside")
    if num_classes == 2:
        if truth.unique().numel() < 2:
            raise ValueError("a binary attack needs both classes among the scored samples to compute a ROC-AUC")
        return float(roc_auc_score(truth.numpy(), guesses.double().numpy()))
    return float((guesses == truth).double().mean())


def _known_fit(guesses: Tensor, truth: Tensor, num_classes: int) -> float:
    if truth.numel() == 0:
        return 0.0
    if num_classes == 2:
        if truth.unique().numel() < 2:
            return 0.5
        return float(roc_auc_score(truth.numpy(), guesses.double().numpy()))
    return float((guesses == truth).double().mean())
