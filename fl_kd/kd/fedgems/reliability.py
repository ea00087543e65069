"""Whom to trust where there is no label: each client's per-class reliability, measured on the labelled part.

On the labelled part of the transfer set the server sees every client's logits next to the label, so it can
count each client's confusion matrix ``M_k[y, c]`` (true class ``y``, predicted class ``c``). A client's
reliability for a predicted class is its smoothed precision there, ``(M_k[c, c] + 1) / (sum_y M_k[y, c] + 2)``:
how often the client is right when it says ``c``. On an unlabelled sample client ``k`` predicting ``c`` gets
weight ``precision_k(c) ** power``; the teacher is the weighted mean of the clients' softmax outputs. This keeps
FedGEMS' "trust whoever is right" where labels are missing: a client that never saw a class, or one that
poisons its answers, is unreliable on the labelled part and fades from the teacher (``methods.md`` 2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Floor of the fused probabilities before the log: the teacher's logits stay finite.
_MIN_PROB = 1e-8
_MIN_TOTAL = 1e-30
"""Below this summed trust a sample's weights are normalised in log space (float32 would lose them)."""


def confusion_matrix(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` counts ``M[y, c]`` of samples with label ``y`` that ``logits`` ``(n, C)`` put in class ``c``."""
    predicted = logits.argmax(dim=1)
    flat = torch.bincount(labels.long() * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).double()


def class_precision(confusion: Tensor) -> Tensor:
    """``(C,)`` smoothed precision per predicted class: ``(M[c, c] + 1) / (sum_y M[y, c] + 2)``."""
    return ((torch.diagonal(confusion) + 1.0) / (confusion.sum(dim=0) + 2.0)).float()


@dataclass(frozen=True)
class UnlabelledTeacher:
    """Fused client knowledge on unlabelled samples.

    Attributes
    ----------
    logits : Tensor
        ``(M, C)`` log of the reliability-weighted mean of the client softmax outputs (zeros without teacher).
    has_teacher : Tensor
        ``(M,)`` bool, True where at least one client answered.
    weights : Tensor
        ``(K, M)`` normalised weight of each client on each sample (0 where it did not answer).
    """

    logits: Tensor
    has_teacher: Tensor
    weights: Tensor


def fuse_by_reliability(
    client_logits: Tensor, available: Tensor, precision: Tensor, power: float = 4.0
) -> UnlabelledTeacher:
    """Fuse ``(K, M, C)`` client logits on unlabelled samples, weighting by per-class reliability.

    Parameters
    ----------
    client_logits : Tensor
        ``(K, M, C)`` logits; entries of unavailable pairs are ignored, whatever they hold.
    available : Tensor
        ``(K, M)`` bool, which client answered which sample.
    precision : Tensor
        ``(K, C)`` each client's reliability per predicted class (:func:`class_precision`).
    power : float (default: 4.0)
        Sharpens the trust: 0 averages all answering clients equally.
    """
    if client_logits.dim() != 3 or available.shape != client_logits.shape[:2]:
        raise ValueError("client_logits must be (K, M, C) and available (K, M)")
    if precision.shape != (client_logits.shape[0], client_logits.shape[2]):
        raise ValueError(f"precision must be (K, C), got {tuple(precision.shape)}")
    logits = torch.where(available.unsqueeze(-1), client_logits, torch.zeros_like(client_logits))
    predicted = logits.argmax(dim=-1)
    reliability = torch.gather(precision, 1, predicted)
    trust = reliability.pow(power) * available
    total = trust.sum(dim=0)
    has_teacher = (available & ((reliability > 0) | (power == 0))).any(dim=0)
    weights = (trust / total.clamp_min(_MIN_TOTAL).unsqueeze(0)) * has_teacher.unsqueeze(0)
    underflow = has_teacher & (total < _MIN_TOTAL)
    if underflow.any():  # a high power on low reliabilities: normalise those samples in log space instead
        log_trust = power * reliability[:, underflow].double().log()
        log_trust = torch.where(available[:, underflow], log_trust, torch.full_like(log_trust, -math.inf))
        weights[:, underflow] = torch.softmax(log_trust, dim=0).to(weights.dtype)
    probs = torch.einsum("km,kmc->mc", weights, F.softmax(logits, dim=-1))
    fused = torch.where(has_teacher.unsqueeze(1), probs.clamp_min(_MIN_PROB).log(), torch.zeros_like(probs))
    return UnlabelledTeacher(logits=fused, has_teacher=has_teacher, weights=weights)
