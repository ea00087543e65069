"""Fed-ET's ensemble targets: weighted consensus and diversity targets from the clients' logits on public inputs.

For each public sample ``x`` and each client model ``k`` of the round (logits ``z_k(x)``, ``C`` classes):

* confidence ``sigma_k^2(x)``: the variance of ``z_k(x)`` over the classes (a peaked output has a large variance);
  it equals the variance of the log-softmax, since the two differ by a per-sample constant;
* weights ``alpha_k(x) = sigma_k^2(x) / sum_j sigma_j^2(x)``;
* weighted consensus ``z_c(x) = sum_k alpha_k(x) z_k(x)`` and its pseudo-label ``y_c(x) = argmax z_c(x)``;
* dissenters ``D(x) = {k : argmax z_k(x) != y_c(x)}``, the clients outside the consensus; their
  confidence-weighted average ``z_d(x) = sum_{k in D(x)} sigma_k^2(x) z_k(x) / sum_{k in D(x)} sigma_k^2(x)`` is
  the diversity target, defined only where ``D(x)`` is not empty.

Where every weight's denominator is zero (all outputs flat), the clients concerned weigh equally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EnsembleTargets:
    """What the server model learns from on the public inputs.

    Attributes
    ----------
    weights : Tensor
        ``(K, N)`` float64 consensus weights ``alpha_k(x)``, summing to 1 over clients.
    consensus_logits : Tensor
        ``(N, C)`` float32 weighted consensus ``z_c``.
    consensus_labels : Tensor
        ``(N,)`` int64 pseudo-labels ``y_c``.
    agrees : Tensor
        ``(K, N)`` bool, client ``k``'s argmax equals the pseudo-label.
    diversity_logits : Tensor
        ``(N, C)`` float32 diversity target ``z_d`` (zeros where no client dissents).
    has_dissent : Tensor
        ``(N,)`` bool, at least one client dissents on the sample.
    """

    weights: Tensor
    consensus_logits: Tensor
    consensus_labels: Tensor
    agrees: Tensor
    diversity_logits: Tensor
    has_dissent: Tensor

    def agreement(self) -> float:
        """Mean share of clients that agree with the consensus, over samples."""
        return float(self.agrees.double().mean())

    def dissent_share(self) -> float:
        """Share of samples on which at least one client dissents."""
        return float(self.has_dissent.double().mean())


def confidence(logits: Tensor) -> Tensor:
    """``(K, N)`` float64 variances over classes of client logits ``(K, N, C)`` (population variance)."""
    if logits.dim() != 3 or logits.shape[0] == 0 or logits.shape[2] < 2:
        raise ValueError(f"client logits must be (K >= 1, N, C >= 2), got {tuple(logits.shape)}")
    return logits.double().var(dim=2, unbiased=False)


def _normalise(scores: Tensor, members: Tensor) -> Tensor:
    """``scores`` ``(K, N)`` normalised over the ``members`` of each column; equal shares where they sum to 0."""
    masked = torch.where(members, scores, torch.zeros_like(scores))
    total = masked.sum(dim=0, keepdim=True)
    count = members.double().sum(dim=0, keepdim=True)
    by_score = masked / torch.where(total > 0, total, torch.ones_like(total))
    equal = members.double() / torch.where(count > 0, count, torch.ones_like(count))
    return torch.where(total > 0, by_score, equal)


def ensemble_targets(logits: Tensor) -> EnsembleTargets:
    """Weighted consensus and diversity targets of client logits ``(K, N, C)`` (clients in a fixed order).

    Raises
    ------
    ValueError
        If the logits are mis-shaped or not finite.
    """
    variance = confidence(logits)
    if not torch.isfinite(logits).all():
        raise ValueError("client logits contain NaN or inf")
    values = logits.double()
    everyone = torch.ones_like(variance, dtype=torch.bool)
    weights = _normalise(variance, everyone)
    consensus = (weights.unsqueeze(2) * values).sum(dim=0)
    labels = consensus.argmax(dim=1)
    agrees = values.argmax(dim=2) == labels.unsqueeze(0)
    dissent_weights = _normalise(variance, ~agrees)
    diversity = (dissent_weights.unsqueeze(2) * values).sum(dim=0)
    return EnsembleTargets(
        weights=weights,
        consensus_logits=consensus.float(),
        consensus_labels=labels,
        agrees=agrees,
        diversity_logits=diversity.float(),
        has_dissent=(~agrees).any(dim=0),
    )
