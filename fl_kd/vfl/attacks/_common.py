"""Bookkeeping shared by the label-inference attacks: input checks and the latest observation per sample id.

An attacker sees each training sample once per epoch; like VFLAIR's scoring attacks we keep only the last
observation of each sample id, so a multi-epoch run is scored on the model state at the end of training.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from fl_kd.vfl.metrics import attack_performance


def check_observation(sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
    """Raise ``ValueError`` unless ids ``(B,)``, embedding ``(B, D)`` and gradient ``(B, D)`` fit together."""
    if sample_ids.dim() != 1:
        raise ValueError(f"sample_ids must have shape (B,), got {tuple(sample_ids.shape)}")
    if gradient.dim() != 2 or gradient.shape[0] != sample_ids.shape[0]:
        raise ValueError(f"gradient must have shape (B, D) with B={sample_ids.shape[0]}, got {tuple(gradient.shape)}")
    if embedding.shape != gradient.shape:
        raise ValueError(
            f"embedding {tuple(embedding.shape)} and gradient {tuple(gradient.shape)} must have the same shape"
        )


def check_labels(labels: Tensor) -> Tensor:
    """Return ``labels`` as a CPU int64 vector ``(N,)``; raise ``ValueError`` for any other shape."""
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
    return labels.detach().to("cpu", torch.int64)


def check_binary(labels: Tensor, attack: str) -> None:
    """Raise ``ValueError`` unless every label is 0 or 1: the scoring attacks of Li et al. are binary only."""
    if labels.numel() and (labels.min() < 0 or labels.max() > 1):
        raise ValueError(f"{attack} needs binary labels in {{0, 1}}, got values up to {int(labels.max())}")


class LatestPerSample:
    """The latest value seen for each sample id, e.g. a predicted label ``()`` or a score ``()`` per sample.

    Storage is a dense table indexed by sample id that grows on demand, so an epoch costs one scatter and no
    Python loop over samples.
    """

    def __init__(self) -> None:
        self._values: Tensor | None = None
        self._seen = torch.zeros(0, dtype=torch.bool)

    def update(self, sample_ids: Tensor, values: Tensor) -> None:
        """Record ``values`` ``(B, ...)`` for ``sample_ids`` ``(B,)``, overwriting earlier observations."""
        ids = sample_ids.detach().to("cpu", torch.int64)
        values = values.detach().to("cpu")
        if ids.numel() == 0:
            return
        if int(ids.min()) < 0:
            raise ValueError("sample ids must be non-negative indices into the training set")
        needed = int(ids.max()) + 1
        if self._values is None:
            self._values = torch.zeros((needed, *values.shape[1:]), dtype=values.dtype)
            self._seen = torch.zeros(needed, dtype=torch.bool)
        elif needed > self._seen.numel():
            capacity = max(needed, 2 * self._seen.numel())
            grown = torch.zeros((capacity, *self._values.shape[1:]), dtype=self._values.dtype)
            grown[: self._seen.numel()] = self._values
            seen = torch.zeros(capacity, dtype=torch.bool)
            seen[: self._seen.numel()] = self._seen
            self._values, self._seen = grown, seen
        self._values[ids] = values.to(self._values.dtype)
        self._seen[ids] = True

    def __len__(self) -> int:
        return int(self._seen.sum())

    def items(self) -> tuple[Tensor, Tensor]:
        """Observed sample ids ``(M,)`` in increasing order and their latest values ``(M, ...)``."""
        if self._values is None:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        ids = torch.nonzero(self._seen).flatten()
        return ids, self._values[ids]


def labels_of(ids: Tensor, labels: Tensor) -> Tensor:
    """True labels ``(M,)`` of observed ``ids``; ``ValueError`` if an id lies outside the label vector."""
    if ids.numel() and int(ids.max()) >= labels.numel():
        raise ValueError(f"sample id {int(ids.max())} has no label: only {labels.numel()} labels were passed")
    return labels[ids]


def score_result(name: str, kind: str, truth: Tensor, scores: Tensor) -> dict[str, Any]:
    """Result dict of a binary scoring attack: ROC-AUC of ``scores`` ``(M,)`` against ``truth`` ``(M,)``."""
    if truth.unique().numel() < 2:
        raise ValueError(f"{name} needs both classes among the scored samples to compute a ROC-AUC")
    auc = float(roc_auc_score(truth.numpy(), scores.numpy()))
    return {
        "attack": name,
        "attack_type": kind,
        "auc": auc,
        "num_samples": int(truth.numel()),
        **attack_performance(auc, 2),
    }
