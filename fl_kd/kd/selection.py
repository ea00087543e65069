"""Selective teacher ensemble of FedGEMS (Cheng et al., 2021, arXiv:2110.11027).

For each transfer sample the server fuses only the clients that classify it correctly, weighting each by its
confidence ``1 / H`` (H the entropy of its softmax). A client that is wrong on a labelled sample, such as one
that flipped labels or uploads poisoned logits, gets weight exactly zero; if no client is correct there is no
teacher and the server falls back to plain cross-entropy.

``weighting="aijack_softmax"`` reproduces the AIJack reimplementation for ablations: it applies a softmax
over clients to ``correct / H``, so wrong clients keep weight ``e**0`` and every answered sample has a
teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Weighting = Literal["inverse_entropy", "aijack_softmax"]
WEIGHTINGS: tuple[str, ...] = ("inverse_entropy", "aijack_softmax")

# Entropies this small mean a one-hot softmax; clamping keeps 1/H finite without changing who dominates.
_MIN_ENTROPY = 1e-12


@dataclass(frozen=True)
class SelectedTeacher:
    """Teacher fused from client logits.

    Attributes
    ----------
    logits : Tensor
        ``(N, C)`` weighted sum of client logits; zeros where ``has_teacher`` is False.
    has_teacher : Tensor
        ``(N,)`` bool, True where at least one client qualified as a teacher.
    weights : Tensor
        ``(K, N)`` weight of each client on each sample; columns sum to 1 where ``has_teacher``, else 0.
    """

    logits: Tensor
    has_teacher: Tensor
    weights: Tensor


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last dimension: ``(..., C) -> (...)``."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def select_teacher(
    client_logits: Tensor,
    labels: Tensor,
    weighting: Weighting = "inverse_entropy",
    available: Tensor | None = None,
) -> SelectedTeacher:
    """Fuse client logits into one teacher per sample, trusting only clients that are right.

    Parameters
    ----------
    client_logits : Tensor
        ``(K, N, C)`` logits of K clients on the same N transfer samples. Entries of unavailable
        (client, sample) pairs are ignored, whatever they hold.
    labels : Tensor
        ``(N,)`` int64 labels of those samples.
    weighting : {"inverse_entropy", "aijack_softmax"} (default: "inverse_entropy")
        ``"inverse_entropy"``: ``w_k = (1/H_k) / sum_{k' correct} (1/H_k')`` over correct clients only.
        ``"aijack_softmax"``: ``w = softmax_k(correct_k / H_k)`` over all answering clients (ablation).
    available : Tensor | None (default: None)
        ``(K, N)`` bool, which client answered which sample; None means all answered.

    Returns
    -------
    SelectedTeacher
        Fused logits ``(N, C)``, mask ``(N,)`` and weights ``(K, N)``.
    """
    if client_logits.dim() != 3:
        raise ValueError(f"client_logits must be (K, N, C), got shape {tuple(client_logits.shape)}")
    num_clients, num_samples, _ = client_logits.shape
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must be (N,) = ({num_samples},), got {tuple(labels.shape)}")
    if available is None:
        available = torch.ones(num_clients, num_samples, dtype=torch.bool, device=client_logits.device)
    elif available.shape != (num_clients, num_samples) or available.dtype != torch.bool:
        raise ValueError(f"available must be a bool (K, N) = ({num_clients}, {num_samples}) mask")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")

    # Zero out what was not sent so that garbage (even NaN) in unused slots cannot leak into the sums.
    logits = torch.where(available.unsqueeze(-1), client_logits, torch.zeros_like(client_logits))
    correct = (logits.argmax(dim=-1) == labels.unsqueeze(0)) & available
    client_entropy = entropy(logits).clamp_min(_MIN_ENTROPY)
    minus_inf = torch.full_like(client_entropy, float("-inf"))

    if weighting == "inverse_entropy":
        has_teacher = correct.any(dim=0)
        # softmax of -log H over correct clients is exactly (1/H_k) / sum(1/H_k'), computed stably.
        scores = torch.where(correct, -client_entropy.log(), minus_inf)
    else:
        has_teacher = available.any(dim=0)
        scores = torch.where(available, correct.to(client_entropy.dtype) / client_entropy, minus_inf)

    if num_clients == 0:
        weights = scores
    else:
        # Columns without any candidate are all -inf; softmax would give NaN there, so mask them to 0.
        safe_scores = torch.where(has_teacher.unsqueeze(0), scores, torch.zeros_like(scores))
        weights = torch.softmax(safe_scores, dim=0) * has_teacher.unsqueeze(0)
    teacher = torch.einsum("kn,knc->nc", weights, logits)
    return SelectedTeacher(logits=teacher, has_teacher=has_teacher, weights=weights)
