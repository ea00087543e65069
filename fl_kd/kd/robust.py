"""Robust aggregation of K client vectors: mean, coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018. Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui and
Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017. The arithmetic is
that of Flower's ``FedMedian``, ``FedTrimmedAvg``, ``Krum`` and ``MultiKrum`` (``flwr.serverapp.strategy``), but
for Multi-Krum's average of the answers it keeps, which weighs them alike rather than by their claimed sample counts,
re-implemented here on plain arrays because the core runs without Flower and the same rules serve logits and
weights alike.

Each rule takes a ``(K, D)`` matrix (one flattened answer per row, in client-id order) and per-client sample
weights, and returns the aggregate ``(D,)`` and each client's share of the fusion weight (shares sum to 1): the
figure from which the share that went to malicious clients is measured.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from fl_kd.config import check_choice, check_range, require_defaults_unless
from fl_kd.registry import Registry

Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class RobustSettings:
    """Parameters of the robust rules.

    Attributes
    ----------
    trim_fraction : float (default: 0.2)
        Trimmed mean: share of the values cut at each end per coordinate, in [0, 0.5) (Flower's ``beta``).
    num_malicious : int (default: 0)
        Krum: assumed number of malicious clients ``f``; a client's score sums its ``K - f - 2`` nearest distances.
    num_selected : int (default: 0)
        Multi-Krum: clients averaged (the lowest scores); 0 means ``K - f``.
    trust_power : float (default: 4.0)
        Logit ``trust`` rule: sharpness of the per-class trust (0: every trusted client equal).
    """

    trim_fraction: float = 0.2
    num_malicious: int = 0
    num_selected: int = 0
    trust_power: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must lie in [0, 0.5), got {self.trim_fraction}")
        if self.num_malicious < 0 or self.num_selected < 0 or not self.trust_power >= 0:
            raise ValueError("num_malicious, num_selected and trust_power must be >= 0")


#: The rules that read each parameter of :class:`AggregationConfig`.
READ_BY: dict[str, tuple[str, ...]] = {
    "trim_fraction": ("trimmed_mean",),
    "num_malicious": ("krum", "multi_krum"),
    "num_selected": ("multi_krum",),
}


@dataclass(kw_only=True)
class AggregationConfig:
    """``strategy.aggregation`` and the parameters of the robust rules, declared once for every strategy that fuses
    its clients' uploads (weights or logits); each strategy's docstring says what it fuses and which rules apply.

    Attributes
    ----------
    aggregation : str (default: "mean")
        The fusion rule; "mean" is each algorithm's own.
    trim_fraction, num_malicious, num_selected : (default: 0.2, 0, 0)
        Parameters of the robust rules (:class:`RobustSettings`).
    """

    aggregation: str = "mean"
    trim_fraction: float = 0.2
    num_malicious: int = 0
    num_selected: int = 0

    def check_aggregation(self, rules: Iterable[str]) -> None:
        """``aggregation`` must be one of ``rules`` and its parameters in range (the key is ``strategy.<name>``)."""
        check_choice("strategy.aggregation", self.aggregation, rules)
        check_range("strategy.trim_fraction", self.trim_fraction, low=0.0, high=0.5, high_open=True)
        check_range("strategy.num_malicious", self.num_malicious, low=0)
        check_range("strategy.num_selected", self.num_selected, low=0)
        for key, rules in READ_BY.items():
            why = f"is used only with strategy.aggregation={' or '.join(rules)}, got {self.aggregation}"
            require_defaults_unless(self, (key,), self.aggregation in rules, why)

    def robust_settings(self) -> RobustSettings:
        """The parameters of ``aggregation``."""
        return RobustSettings(self.trim_fraction, self.num_malicious, self.num_selected)


class Aggregate(NamedTuple):
    """``value`` ``(D,)`` and ``client_weights`` ``(K,)`` (the share of fusion weight each client got)."""

    value: Matrix
    client_weights: Matrix


RobustRule = Callable[[Matrix, Matrix, RobustSettings], Aggregate]
"""``rule(values (K, D), sample_weights (K,), settings) -> Aggregate``."""

ROBUST_RULES: Registry[RobustRule] = Registry("aggregation rule")


def _check(values: Matrix, sample_weights: Matrix) -> None:
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"need values (K >= 1, D), got shape {values.shape}")
    if sample_weights.shape != (values.shape[0],) or not (sample_weights >= 0).all() or sample_weights.sum() <= 0:
        raise ValueError("need one non-negative sample weight per client, not all zero")


def _weighted_mean(values: Matrix, weights: Matrix) -> Aggregate:
    shares = weights / weights.sum()
    return Aggregate(shares @ values, shares)


@ROBUST_RULES.register("mean")
def mean(values: Matrix, sample_weights: Matrix, settings: RobustSettings) -> Aggregate:
    """Average weighted by ``sample_weights`` (FedAvg's rule; equal weights give the plain mean)."""
    _check(values, sample_weights)
    return _weighted_mean(values, sample_weights)


def _order_shares(values: Matrix, keep: slice) -> tuple[Matrix, Matrix]:
    """Per coordinate, the mean of the sorted values in ``keep``, and how often each client was kept (share)."""
    num_clients, dims = values.shape
    order = np.argsort(values, axis=0, kind="stable")
    kept = order[keep]
    value = np.take_along_axis(values, kept, axis=0).mean(axis=0)
    counts = np.bincount(kept.ravel(), minlength=num_clients).astype(np.float64)
    return value, counts / counts.sum()


@ROBUST_RULES.register("median")
def median(values: Matrix, sample_weights: Matrix, settings: RobustSettings) -> Aggregate:
    """Coordinate-wise median (``np.median``'s: the mean of the two middle values for even K)."""
    _check(values, sample_weights)
    num_clients = values.shape[0]
    middle = slice((num_clients - 1) // 2, num_clients // 2 + 1)
    _, shares = _order_shares(values, middle)
    return Aggregate(np.median(values, axis=0), shares)


@ROBUST_RULES.register("trimmed_mean")
def trimmed_mean(values: Matrix, sample_weights: Matrix, settings: RobustSettings) -> Aggregate:
    """Coordinate-wise mean after cutting ``int(trim_fraction * K)`` values at each end (Flower's ``trim_mean``)."""
    _check(values, sample_weights)
    num_clients = values.shape[0]
    cut = int(settings.trim_fraction * num_clients)
    value, shares = _order_shares(values, slice(cut, num_clients - cut))
    return Aggregate(value, shares)


def krum_scores(values: Matrix, num_malicious: int) -> Matrix:
    """Each client's Krum score: the sum of squared distances to its ``max(1, K - f - 2)`` nearest others."""
    num_clients = values.shape[0]
    if num_clients == 1:
        return np.zeros(1)
    norms = np.square(values).sum(axis=1)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2.0 * values @ values.T, 0.0)
    np.fill_diagonal(distances, np.inf)
    nearest = min(num_clients - 1, max(1, num_clients - num_malicious - 2))
    scores: Matrix = np.sort(distances, axis=1)[:, :nearest].sum(axis=1)
    return scores


def _krum(values: Matrix, sample_weights: Matrix, num_malicious: int, num_selected: int) -> Aggregate:
    _check(values, sample_weights)
    if values.shape[0] <= 2 * num_malicious + 2:
        # Krum's guarantee needs K > 2f + 2; below it the scores still rank the answers, but colluders can win.
        warnings.warn(
            "krum: fewer answers than 2 * num_malicious + 3 in a round; its guarantee against num_malicious "
            "colluders does not hold there (sample more clients or lower strategy.num_malicious)",
            RuntimeWarning,
            stacklevel=2,
        )
    scores = krum_scores(values, num_malicious)
    chosen = np.argsort(scores, kind="stable")[: max(1, min(num_selected, values.shape[0]))]
    mask = np.zeros(values.shape[0])
    mask[chosen] = 1.0
    # The kept answers count alike, as in Blanchard et al.: weighted by their claimed sample counts (as Flower's
    # MultiKrum weighs them), a liar that stays close enough to be kept would take the average by claiming more.
    return _weighted_mean(values, mask)


@ROBUST_RULES.register("krum")
def krum(values: Matrix, sample_weights: Matrix, settings: RobustSettings) -> Aggregate:
    """The one answer closest to its ``K - f - 2`` nearest neighbours (Krum)."""
    return _krum(values, sample_weights, settings.num_malicious, 1)


@ROBUST_RULES.register("multi_krum")
def multi_krum(values: Matrix, sample_weights: Matrix, settings: RobustSettings) -> Aggregate:
    """The mean of the ``m`` answers with the best Krum scores (``m = num_selected``, or ``K - f`` when 0, so with
    ``f = 0`` too it keeps every answer: the plain mean, the honest point of a sweep over ``f``)."""
    selected = settings.num_selected or values.shape[0] - settings.num_malicious
    if settings.num_selected >= values.shape[0]:
        warnings.warn(
            f"multi_krum: strategy.num_selected={selected} of {values.shape[0]} answers keeps them all, which is the "
            "plain mean (lower strategy.num_selected)",
            RuntimeWarning,
            stacklevel=2,
        )
    return _krum(values, sample_weights, settings.num_malicious, selected)
