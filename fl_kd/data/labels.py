"""Validation of label arrays shared by the transfer set and the partitioners."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["allocate_proportionally", "as_label_array"]


def as_label_array(labels: Any, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D ``int64`` NumPy array, accepting NumPy arrays, tensors and sequences.

    Parameters
    ----------
    labels : array-like or torch.Tensor
        Class index of each example, shape ``(N,)``.
    name : str (default: "labels")
        Name used in error messages.

    Raises
    ------
    ValueError
        If ``labels`` is not one-dimensional, not integer-valued, or holds negative classes.
    """
    if hasattr(labels, "detach"):  # a torch.Tensor, possibly on an accelerator
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (N,), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, found {array.min()}")
    return array


def allocate_proportionally(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` into parts proportional to ``weights`` (largest-remainder method).

    Exact integer arithmetic: each part is ``floor(total * w / sum(w))`` plus one for the largest
    remainders (ties go to the lower index), so the parts sum to ``total`` and no part exceeds its
    weight when ``total <= sum(weights)`` and weights are integers.

    Parameters
    ----------
    total : int
        Amount to distribute, ``>= 0``.
    weights : np.ndarray
        Non-negative integer weights of shape ``(K,)`` with a positive sum.

    Returns
    -------
    np.ndarray
        ``int64`` parts of shape ``(K,)`` summing to ``total``.
    """
    weights = np.asarray(weights, dtype=np.int64)
    weight_sum = int(weights.sum())
    numerators = total * weights
    parts = numerators // weight_sum
    remainders = numerators % weight_sum
    shortfall = total - int(parts.sum())
    # Stable sort on the negated remainder keeps lower indices first among ties.
    order = np.argsort(-remainders, kind="stable")
    parts[order[:shortfall]] += 1
    return parts
