"""Gradient clustering: k-means on L2-normalised per-sample gradients, clusters named by a few known labels.

Any defence whose fake label is a fixed function of the true label leaves per-sample gradients that cluster by
class, whatever it does to their signs or to the names of the classes; a handful of known labels then names the
clusters. This attack needs no assumption on the top model: the gradients may have any width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fl_kd.vfl.attacks.adaptive import EpochwiseAttack, fit_relabelling, orient


def kmeans(
    points: Tensor, k: int, generator: torch.Generator, init: Tensor | None = None, max_iter: int = 100
) -> tuple[Tensor, Tensor, float]:
    """Lloyd's k-means of ``points`` ``(N, D)``: cluster ``(N,)`` of each point, centroids ``(k, D)``, inertia.

    Starts from ``init`` ``(k, D)`` or, when None, from a k-means++ draw with ``generator``. A cluster that
    empties keeps its centroid.
    """
    points = points.double()
    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {points.shape[0]}")
    centroids = init.double().clone() if init is not None else _kmeans_plus_plus(points, k, generator)
    assign = torch.full((points.shape[0],), -1, dtype=torch.int64)
    for _ in range(max_iter):
        new_assign = torch.cdist(points, centroids).argmin(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    inertia = float(((points - centroids[assign]) ** 2).sum())
    return assign, centroids, inertia


def _kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    chosen = [points[first]]
    nearest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            index = int(torch.multinomial(nearest / total, 1, generator=generator))
        else:
            index = int(torch.randint(points.shape[0], (1,), generator=generator))
        chosen.append(points[index])
        nearest = torch.minimum(nearest, ((points - points[index]) ** 2).sum(dim=1))
    return torch.stack(chosen)


class GradientClustering(EpochwiseAttack):
    """k-means (k = number of classes) of each epoch's normalised gradients, clusters named by the known labels.

    Per epoch: ``n_init`` k-means++ starts, plus one start at the mean normalised gradient of each class's known
    samples when every class has one; each run's clusters are named by the one-to-one renaming that best fits
    the known labels (:func:`~fl_kd.vfl.attacks.adaptive.fit_relabelling`), and the run that fits them best
    (lowest inertia on a tie) gives the guesses. On a binary task the score of class 1 is the difference of the
    cosines to the centroids named 1 and 0, and AP is its ROC-AUC.

    Parameters
    ----------
    known_labels : int | None (default: None)
        Training labels the attacker knows; None: 40 on a multi-class task, 4 on a binary one. Never scored.
    n_init : int (default: 4)
        k-means++ starts per epoch.
    max_iter : int (default: 100)
        Lloyd iterations per start at most.
    num_classes : int | None (default: None)
        Number of classes (= k); None takes it from the labels passed to ``result``.
    seed : int (default: 0)
        Seed of the known-label draw and of the k-means++ starts.
    average_epochs : bool (default: True)
        Also cluster each sample's gradients averaged over the first ``e`` epochs.
    """

    name = "gradient_clustering"

    def __init__(
        self,
        known_labels: int | None = None,
        n_init: int = 4,
        max_iter: int = 100,
        num_classes: int | None = None,
        seed: int = 0,
        average_epochs: bool = True,
    ) -> None:
        super().__init__(known_labels=known_labels, num_classes=num_classes, seed=seed, average_epochs=average_epochs)
        if n_init < 1 or max_iter < 1:
            raise ValueError(f"n_init and max_iter must be positive, got {n_init} and {max_iter}")
        self.n_init, self.max_iter = n_init, max_iter

    def predict(self, gradients: Tensor, is_known: Tensor, known_truth: Tensor, num_classes: int) -> tuple[Tensor, str]:
        points = torch.nn.functional.normalize(gradients.double(), dim=1)
        generator = torch.Generator().manual_seed(self.seed)
        starts: list[tuple[str, Tensor | None]] = [(f"k-means++ start {i}", None) for i in range(self.n_init)]
        if torch.unique(known_truth).numel() == num_classes:
            known_points = points[is_known]
            means = torch.stack([known_points[known_truth == c].mean(dim=0) for c in range(num_classes)])
            starts.append(("start at the known class means", means))
        best: tuple[float, float, Tensor, Tensor, str] | None = None
        for label, init in starts:
            assign, centroids, inertia = kmeans(points, num_classes, generator, init, self.max_iter)
            naming = fit_relabelling(assign[is_known], known_truth, num_classes)
            guesses = naming[assign]
            fit = float((guesses[is_known] == known_truth).double().mean()) if known_truth.numel() else 0.0
            if best is None or (fit, -inertia) > (best[0], -best[1]):
                named = torch.empty_like(centroids)
                named[naming] = centroids
                best = (fit, inertia, guesses, named, label)
        assert best is not None
        _, _, guesses, named, label = best
        if num_classes == 2:
            cosines = torch.nn.functional.normalize(named, dim=1) @ points.T
            return orient(cosines[1] - cosines[0], is_known, known_truth), label
        return guesses, label
