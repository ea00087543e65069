"""Fusion rules: how client logits on one transfer sample become one teacher, chosen by name.

A rule sees, for K clients and N samples, which client answered (``available``), which was right
(``correct``), how unsure each was (``entropy`` of its softmax) and where the label is known (``known``: on a
held-out sample it is not, and every answering client counts as right there), and returns a score per (client, sample)
(``-inf`` for a client that must get no weight) plus which samples have a teacher at all. The weights are the
softmax of the scores over clients. New rules register here and become choosable as ``strategy.weighting=<name>``.

Strategies that fuse whole answers rather than per-sample scores (FedMD, DS-FL) pick a logit aggregation from
:data:`LOGIT_AGGREGATIONS` as ``strategy.aggregation=<name>``: the plain mean, the robust rules of
:mod:`fl_kd.kd.robust` (coordinate-wise median, trimmed mean, Krum, Multi-Krum) on the flattened logits, and
``trust``, per-client per-class trust measured on the server's labelled transfer samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.kd.robust import ROBUST_RULES, RobustSettings
from fl_kd.registry import Registry


class FusionScores(NamedTuple):
    """``scores`` ``(K, N)`` (``-inf`` = no weight) and ``has_teacher`` ``(N,)`` bool."""

    scores: Tensor
    has_teacher: Tensor


FusionRule = Callable[[Tensor, Tensor, Tensor, Tensor], FusionScores]
"""``rule(correct, available, entropy, known) -> FusionScores``; ``known`` is ``(N,)``, every other input ``(K, N)``."""

FUSION_RULES: Registry[FusionRule] = Registry("fusion rule")


@FUSION_RULES.register("inverse_entropy")
def inverse_entropy(correct: Tensor, available: Tensor, entropy: Tensor, known: Tensor) -> FusionScores:
    """FedGEMS: ``w_k = (1/H_k) / sum_{k' correct} (1/H_k')`` over the correct clients only.

    A client that is wrong on a labelled sample gets weight exactly zero; a sample without a correct client has
    no teacher. The softmax of ``-log H`` over correct clients is exactly the normalised ``1/H``, computed stably.
    """
    minus_inf = torch.full_like(entropy, float("-inf"))
    return FusionScores(torch.where(correct, -entropy.log(), minus_inf), correct.any(dim=0))


@FUSION_RULES.register("aijack_softmax")
def aijack_softmax(correct: Tensor, available: Tensor, entropy: Tensor, known: Tensor) -> FusionScores:
    """AIJack's reimplementation, for ablations: ``w = softmax_k(correct_k / H_k)`` over all answering clients.

    Wrong clients keep weight ``e**0``, so every answered sample has a teacher.
    """
    minus_inf = torch.full_like(entropy, float("-inf"))
    return FusionScores(torch.where(available, correct.to(entropy.dtype) / entropy, minus_inf), available.any(dim=0))


@FUSION_RULES.register("correct_uniform")
def correct_uniform(correct: Tensor, available: Tensor, entropy: Tensor, known: Tensor) -> FusionScores:
    """Equal weights over the correct clients: FedGEMS' selection without its confidence weighting.

    Inverse entropy lets a client that inflates its logits (``scaled_logits``) dominate every sample it gets right;
    here confidence buys no weight.
    """
    minus_inf = torch.full_like(entropy, float("-inf"))
    return FusionScores(torch.where(correct, torch.zeros_like(entropy), minus_inf), correct.any(dim=0))


@FUSION_RULES.register("trusted_inverse_entropy")
def trusted_inverse_entropy(correct: Tensor, available: Tensor, entropy: Tensor, known: Tensor) -> FusionScores:
    """FedGEMS' rule times each client's accuracy on the round's answered samples: ``w_k ~ acc_k / H_k``.

    A client that is right here but wrong on most samples (a targeted or noisy attacker) counts for less than one
    that is right almost everywhere. The accuracy counts only samples whose label is known: on a held-out sample
    every answering client counts as right, which would lift a client wrong everywhere else to the held-out share.
    """
    answered = available & known.unsqueeze(0)
    right = (correct & answered).sum(dim=1, keepdim=True).to(entropy.dtype)
    accuracy = right / answered.sum(dim=1, keepdim=True).clamp_min(1)
    minus_inf = torch.full_like(entropy, float("-inf"))
    scores = accuracy.clamp_min(1e-12).log() - entropy.log()
    return FusionScores(torch.where(correct, scores, minus_inf), correct.any(dim=0))


# Logit aggregation: how the logits of K clients on the same public samples become one teacher, for strategies
# that fuse whole answers (FedMD's consensus, DS-FL's average of soft labels), chosen as ``strategy.aggregation``.


class FusedLogits(NamedTuple):
    """``logits`` ``(N, C)`` fused, and ``client_weights`` ``(K,)``: each client's share of the fusion weight."""

    logits: NDArray[np.float64]
    client_weights: NDArray[np.float64]


LogitAggregation = Callable[[NDArray[np.float64], NDArray[np.int64], RobustSettings], FusedLogits]
"""``rule(values (K, N, C), labels (N,) with -1 where unknown, settings) -> FusedLogits``."""

LOGIT_AGGREGATIONS: Registry[LogitAggregation] = Registry("logit aggregation")


def _coordinate_rule(name: str) -> LogitAggregation:
    rule = ROBUST_RULES.get(name)

    def aggregate(values: NDArray[np.float64], labels: NDArray[np.int64], settings: RobustSettings) -> FusedLogits:
        num_clients, num_samples, num_classes = _check_logits(values, labels)
        fused = rule(values.reshape(num_clients, -1), np.ones(num_clients), settings)
        return FusedLogits(fused.value.reshape(num_samples, num_classes), fused.client_weights)

    aggregate.__doc__ = f"The {name} rule of :data:`fl_kd.kd.robust.ROBUST_RULES` on the flattened ``(N * C)`` values."
    return aggregate


def _check_logits(values: NDArray[np.float64], labels: NDArray[np.int64]) -> tuple[int, int, int]:
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(f"need values (K >= 1, N, C), got shape {values.shape}")
    if labels.shape != values.shape[1:2]:
        raise ValueError(f"labels must be (N,) = ({values.shape[1]},), got {labels.shape}")
    return values.shape[0], values.shape[1], values.shape[2]


for _name in ROBUST_RULES:
    LOGIT_AGGREGATIONS.add(_name, _coordinate_rule(_name))


@LOGIT_AGGREGATIONS.register("trust")
def trust(values: NDArray[np.float64], labels: NDArray[np.int64], settings: RobustSettings) -> FusedLogits:
    """Trust from the server's labelled samples, per client and per class, as selective KD judges clients.

    Client ``k``'s trust in class ``c`` is its smoothed precision on this round's labelled samples,
    ``(M_k[c, c] + 1) / (sum_y M_k[y, c] + 2)`` (``M_k`` its confusion matrix); its weight on a sample is that
    trust for the class it predicts there, raised to ``trust_power``. On a labelled sample where some client is
    right only those clients count (FedGEMS' rule); elsewhere (unlabelled, or nobody right) every client counts by
    its trust. The fused logits are the weighted mean.
    """
    num_clients, num_samples, num_classes = _check_logits(values, labels)
    predicted = values.argmax(axis=2)  # (K, N)
    known = labels >= 0
    confusion = np.zeros((num_clients, num_classes, num_classes))
    for k in range(num_clients):
        np.add.at(confusion[k], (labels[known], predicted[k, known]), 1.0)
    precision = (np.einsum("kcc->kc", confusion) + 1.0) / (confusion.sum(axis=1) + 2.0)  # (K, C), in (0, 1)
    trusted = np.take_along_axis(precision, predicted, axis=1)  # (K, N)
    correct = known[None, :] & (predicted == labels[None, :])
    counted = np.where(correct.any(axis=0)[None, :], correct, True)  # (K, N): who counts on each sample
    weights = np.where(counted, trusted**settings.trust_power, 0.0)
    totals = weights.sum(axis=0, keepdims=True)
    if not (totals > 0).all():
        # A large trust_power underflows every weight of a sample to 0 (0/0): the same weights, in log space.
        log_weights = np.where(counted, settings.trust_power * np.log(trusted), -np.inf)
        weights = np.exp(log_weights - log_weights.max(axis=0, keepdims=True))
        totals = weights.sum(axis=0, keepdims=True)
    weights = weights / totals
    return FusedLogits(np.einsum("kn,knc->nc", weights, values), weights.mean(axis=1))
