"""Selective teacher ensemble of FedGEMS (Cheng et al., 2021, arXiv:2110.11027).

For each transfer sample the server fuses only the clients that classify it correctly, weighting each by its
confidence ``1 / H`` (H the entropy of its softmax). A client that is wrong on a labelled sample, such as one
that flipped labels or uploads poisoned logits, gets weight exactly zero; if no client is correct there is no
teacher and the server falls back to plain cross-entropy.

How clients are weighted is a fusion rule from :data:`fl_kd.kd.fusion.FUSION_RULES`, chosen by name
(``inverse_entropy``, FedGEMS's rule, by default; ``aijack_softmax`` for ablations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fl_kd.kd.fusion import FUSION_RULES

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
    weighting: str = "inverse_entropy",
    available: Tensor | None = None,
) -> SelectedTeacher:
    """Fuse client logits into one teacher per sample, trusting only clients that are right.

    Parameters
    ----------
    client_logits : Tensor
        ``(K, N, C)`` logits of K clients on the same N transfer samples. Entries of unavailable
        (client, sample) pairs are ignored, whatever they hold.
    labels : Tensor
        ``(N,)`` int64 labels of those samples; ``-1`` where the label must not be used (a held-out sample): there
        every answering client counts as right, so the rule fuses them by confidence alone.
    weighting : str (default: "inverse_entropy")
        Name of a fusion rule in :data:`fl_kd.kd.fusion.FUSION_RULES`.
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
    rule = FUSION_RULES.get(weighting)

    # Zero out what was not sent so that garbage (even NaN) in unused slots cannot leak into the sums.
    logits = torch.where(available.unsqueeze(-1), client_logits, torch.zeros_like(client_logits))
    known = labels >= 0
    correct = torch.where(known.unsqueeze(0), logits.argmax(dim=-1) == labels.unsqueeze(0), available) & available
    client_entropy = entropy(logits).clamp_min(_MIN_ENTROPY)
    scores, has_teacher = rule(correct, available, client_entropy, known)

    if num_clients == 0:
        weights = scores
    else:
        # Columns without any candidate are all -inf; softmax would give NaN there, so mask them to 0.
        safe_scores = torch.where(has_teacher.unsqueeze(0), scores, torch.zeros_like(scores))
        weights = torch.softmax(safe_scores, dim=0) * has_teacher.unsqueeze(0)
    teacher = torch.einsum("kn,knc->nc", weights, logits)
    return SelectedTeacher(logits=teacher, has_teacher=has_teacher, weights=weights)
