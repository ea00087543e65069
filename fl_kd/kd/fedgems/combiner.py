"""A learned fusion of the clients' answers: one weight per client and class, fitted on labels no client saw.

Per-class precision (:mod:`fl_kd.kd.fedgems.reliability`) is a fixed rule; when the server holds labelled samples
whose labels no client ever trained on (the held-out slice with ``reliability_on="held_out"``), it can instead fit
how much to trust each client on each class. With ``lp_k = log_softmax(z_k)`` client ``k``'s log-probabilities
(``log(1/C)``, uniform, where ``k`` did not answer) the teacher's logits are

    logits_y = sum_k w[k, y] * lp_k[y] + b_y

fitted by L-BFGS on cross-entropy plus ``weight_decay * sum (w - 1) ** 2`` (from ``w = 1``, ``b = 0``: the
product of the clients' distributions). A stacking combiner in the spirit of Wolpert's stacked generalisation;
measured offline on Fashion-MNIST (20 local-only clients after 3 rounds, alpha 0.5, fitted on 500 labels) it
labelled the 10,000 unlabelled samples right 0.820 of the time, against 0.774 for the precision rule and 0.771 for
the plain mean.

A product lets one confident answer veto a class: a client that puts all its mass on a wrong class sends
``lp[y] ~ -10`` for the true one. With ``prob_floor`` each log-probability enters no lower than ``log(prob_floor)``,
so one answer counts against a class at most that much, whoever sent it; with ``trim`` the ``trim`` lowest and
``trim`` highest terms of each sample and class are dropped (a trimmed product, as a trimmed mean), so up to
``trim`` answers that vote together against the truth, or for one wrong class, count for nothing.

The teacher's fusion weights (who taught) are the normalised positive part of ``w[k, y*]`` over the answering
clients, ``y*`` the teacher's predicted class: the share of the winning logit each client was trusted with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_kd.kd.fedgems.reliability import UnlabelledTeacher


@dataclass(frozen=True)
class ClassCombiner:
    """Fitted combiner.

    Attributes
    ----------
    weight : Tensor
        ``(K, C)`` weight of client ``k`` on its log-probability of class ``y``.
    bias : Tensor
        ``(C,)`` class bias.
    loss : float
        Mean cross-entropy of the fitted combiner on the samples it was fitted on (NaN when fitted on none).
    prob_floor : float
        The floor the clients' probabilities were fitted with, and are fused with.
    trim : int
        The number of lowest and of highest terms per sample and class left out, in the fit and the fusion alike.
    """

    weight: Tensor
    bias: Tensor
    loss: float
    prob_floor: float = 0.0
    trim: int = 0


def client_log_probs(client_logits: Tensor, available: Tensor, prob_floor: float = 0.0) -> Tensor:
    """``(K, n, C)`` float64 log-softmax of ``client_logits``, no lower than ``log(prob_floor)`` (when positive),
    ``log(1/C)`` where ``available`` ``(K, n)`` is False."""
    if client_logits.dim() != 3 or available.shape != client_logits.shape[:2]:
        raise ValueError("client_logits must be (K, n, C) and available (K, n)")
    num_classes = client_logits.shape[2]
    if not 0.0 <= prob_floor < 1.0 / num_classes:
        raise ValueError(f"prob_floor must lie in [0, 1/C) = [0, {1 / num_classes:g}), got {prob_floor}")
    safe = torch.where(available.unsqueeze(-1), client_logits.double(), torch.zeros((), dtype=torch.float64))
    uniform = torch.full_like(safe, -math.log(num_classes))
    log_probs = F.log_softmax(safe, dim=-1)
    if prob_floor > 0.0:
        log_probs = log_probs.clamp_min(math.log(prob_floor))
    return torch.where(available.unsqueeze(-1), log_probs, uniform)


def combine(log_probs: Tensor, weight: Tensor, bias: Tensor, trim: int = 0) -> Tensor:
    """``(n, C)`` combiner output ``sum_k w[k, y] * lp_k[y] + b_y`` from ``(K, n, C)`` log-probabilities; with
    ``trim`` the ``trim`` lowest and ``trim`` highest terms of each sample and class are left out of the sum."""
    terms = log_probs * weight.to(log_probs.dtype).unsqueeze(1)
    if 0 < 2 * trim < terms.shape[0]:
        terms = terms.sort(dim=0).values[trim : terms.shape[0] - trim]
    return terms.sum(dim=0) + bias.to(log_probs.dtype)


def fit_class_combiner(
    client_logits: Tensor,
    available: Tensor,
    labels: Tensor,
    weight_decay: float = 1e-3,
    iterations: int = 200,
    prob_floor: float = 0.0,
    trim: int = 0,
) -> ClassCombiner:
    """Fit the per-client, per-class weights on labelled answers (deterministic: float64 L-BFGS on CPU).

    Parameters
    ----------
    client_logits : Tensor
        ``(K, n, C)`` the clients' logits on labelled samples they never trained on.
    available : Tensor
        ``(K, n)`` bool, which client answered which sample; missing answers count as uniform, as on the
        unlabelled samples the combiner is applied to.
    labels : Tensor
        ``(n,)`` true classes.
    weight_decay : float (default: 1e-3)
        Pull of ``w`` towards 1 (the unweighted product of the clients); keeps a small slice from overfitting.
    iterations : int (default: 200)
        L-BFGS iterations.
    prob_floor : float (default: 0.0)
        Floor of each client's probabilities (0: none); bounds what one answer can count against a class.
    trim : int (default: 0)
        Lowest and highest terms left out per sample and class (0: none; ignored unless ``2 * trim < K``).
    """
    num_clients, num, num_classes = client_logits.shape
    if labels.shape != (num,):
        raise ValueError(f"labels must be ({num},), got {tuple(labels.shape)}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    weight = torch.ones(num_clients, num_classes, dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    if num == 0 or num_clients == 0:
        return ClassCombiner(weight.float(), bias.float(), float("nan"), prob_floor, trim)
    log_probs = client_log_probs(client_logits, available, prob_floor).cpu()
    targets = labels.long().cpu()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = (
            F.cross_entropy(combine(log_probs, weight, bias, trim), targets) + weight_decay * (weight - 1).pow(2).sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    with torch.no_grad():
        loss = float(F.cross_entropy(combine(log_probs, weight, bias, trim), targets))
    if not math.isfinite(loss):  # a diverged fit: fall back to the unweighted product
        weight, bias = torch.ones_like(weight), torch.zeros_like(bias)
        loss = float(F.cross_entropy(combine(log_probs, weight, bias, trim), targets))
    return ClassCombiner(weight.float(), bias.float(), loss, prob_floor, trim)


@torch.no_grad()
def fuse_by_combiner(client_logits: Tensor, available: Tensor, combiner: ClassCombiner) -> UnlabelledTeacher:
    """Fuse ``(K, M, C)`` client logits on unlabelled samples with a fitted :class:`ClassCombiner`.

    The teacher's logits are the log-softmax of the combiner output (zeros where nobody answered, which have no
    teacher); the weights ``(K, M)`` are the normalised positive part of ``w[k, y*]`` over the answering clients.
    """
    num_clients, _, num_classes = client_logits.shape
    if combiner.weight.shape != (num_clients, num_classes):
        raise ValueError(f"combiner weight must be ({num_clients}, {num_classes}), got {tuple(combiner.weight.shape)}")
    log_probs = client_log_probs(client_logits, available, combiner.prob_floor)
    fused = F.log_softmax(combine(log_probs, combiner.weight, combiner.bias, combiner.trim), dim=1).float()
    has_teacher = available.any(dim=0)
    predicted = fused.argmax(dim=1)
    trust = combiner.weight[:, predicted].clamp_min(0.0) * available
    total = trust.sum(dim=0)
    # Where every answering client has a non-positive weight on the winner, share the credit equally.
    trust = torch.where((total > 0).unsqueeze(0), trust, available.float())
    weights = trust / trust.sum(dim=0).clamp_min(1e-30).unsqueeze(0) * has_teacher.unsqueeze(0)
    logits = torch.where(has_teacher.unsqueeze(1), fused, torch.zeros_like(fused))
    return UnlabelledTeacher(logits=logits, has_teacher=has_teacher, weights=weights)
