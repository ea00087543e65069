"""Which clients and which test samples a round is evaluated on.

Evaluating every client on the whole test set every round costs ``O(clients x test set)`` per round, more than
the training of a small federation, and in a federation of a thousand clients far more than the few that train.
The rounds in between only show a trend, so they may evaluate a seeded sample of the clients on a fixed, seeded
subset of the test set; the last round always evaluates every client on all of it, so every final figure is exact.
Both runtimes (the in-process runner and the Flower apps) ask :func:`round_test_indices` and
:func:`evaluated_clients` for the same round and get the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fl_kd.config import check_range
from fl_kd.kd.seeding import derive_seed


@dataclass
class EvaluationConfig:
    """How much of the test set the rounds before the last are evaluated on.

    Attributes
    ----------
    test_samples : int (default: 0)
        Size of the fixed, seeded, class-stratified test subset used by the server and every client in the rounds
        before the last; 0 (or at least the test set's size) evaluates on the whole test set every round.
    fraction_clients : float (default: 1.0)
        Share of the clients evaluated in the rounds before the last, drawn from ``(seed, round)`` apart from the
        clients sampled for training (at least one); the sampled clients still receive the server's knowledge.
    """

    test_samples: int = 0
    fraction_clients: float = 1.0

    def __post_init__(self) -> None:
        check_range("evaluation.test_samples", self.test_samples, low=0)
        check_range("evaluation.fraction_clients", self.fraction_clients, low=0.0, high=1.0, low_open=True)


def evaluated_clients(num_clients: int, config: EvaluationConfig, seed: int, round: int, last_round: int) -> list[int]:
    """Sorted ids of the clients evaluated in ``round``: a seeded sample before the last round, all in the last."""
    if config.fraction_clients >= 1.0 or round >= last_round:
        return list(range(num_clients))
    count = max(1, min(num_clients, int(np.floor(config.fraction_clients * num_clients + 0.5))))
    rng = np.random.default_rng(derive_seed(seed, "eval_clients", round))
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def round_test_indices(
    labels: NDArray[np.integer], config: EvaluationConfig, seed: int, round: int, last_round: int
) -> NDArray[np.int64] | None:
    """Test-split indices to evaluate ``round`` on, or None for the whole test set.

    The subset is stratified (each class in proportion to its share of the test set, largest remainders first)
    so that a skewed class cannot swing the trend; it is drawn from ``seed`` alone and so is the same in every
    round and every runtime.
    """
    size = labels.shape[0]
    if config.test_samples == 0 or config.test_samples >= size or round >= last_round:
        return None
    return _stratified_subset(labels, config.test_samples, derive_seed(seed, "eval_test_subset"))


def _stratified_subset(labels: NDArray[np.integer], count: int, seed: int) -> NDArray[np.int64]:
    """``count`` sorted indices whose classes follow ``labels``' class shares."""
    rng = np.random.default_rng(seed)
    classes, totals = np.unique(labels, return_counts=True)
    exact = totals * count / labels.shape[0]
    quota = np.floor(exact).astype(np.int64)
    shortfall = count - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:shortfall]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == cls), size=int(take), replace=False)
        for cls, take in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)
