"""Robust aggregation of model weights: FedAvg's step with a robust rule instead of the sample-weighted mean.

Each client's weights are flattened, in ``state_dict`` order, into one row of a ``(K, D)`` matrix and fused by a
rule of :mod:`fl_kd.kd.robust` (coordinate-wise median, trimmed mean, Krum, Multi-Krum; what Flower's
``FedMedian``, ``FedTrimmedAvg``, ``Krum`` and ``MultiKrum`` compute), then cut back into arrays of their shapes.
:func:`fltrust_average` fuses the updates by FLTrust's rule instead, against the server's own update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.robust import ROBUST_RULES, Aggregate, RobustSettings

Arrays = dict[str, NDArray[Any]]


def robust_average(
    models: Sequence[Mapping[str, NDArray[Any]]],
    sample_counts: Sequence[float],
    rule: str,
    settings: RobustSettings | None = None,
) -> tuple[Arrays, NDArray[np.float64]]:
    """Fuse ``models`` (same names and shapes) by ``rule``; returns the float32 arrays and each client's share.

    Parameters
    ----------
    models : Sequence[Mapping[str, ndarray]]
        Per client, its weights by name (clients in a fixed order, e.g. by id, so every runtime gets the same bits).
    sample_counts : Sequence[float]
        Per client, its sample count (the weight of "mean" and of the clients Multi-Krum keeps).
    rule : str
        A name in :data:`fl_kd.kd.robust.ROBUST_RULES`.
    settings : RobustSettings | None (default: None)
        The rule's parameters (defaults when None).
    """
    if not models or len(models) != len(sample_counts):
        raise ValueError(
            f"need one sample count per model, at least one model; got {len(models)}, {len(sample_counts)}"
        )
    matrix = np.stack([flatten(model, list(models[0])) for model in models])
    fused = ROBUST_RULES.get(rule)(matrix, np.asarray(sample_counts, dtype=np.float64), settings or RobustSettings())
    return unflatten(fused.value, models[0]), fused.client_weights


def flatten(model: Mapping[str, NDArray[Any]], names: Sequence[str]) -> NDArray[np.float64]:
    """The arrays ``names`` of ``model`` as one float64 vector, in that order."""
    return np.concatenate([np.asarray(model[name], dtype=np.float64).ravel() for name in names])


def unflatten(vector: NDArray[np.float64], like: Mapping[str, NDArray[Any]]) -> Arrays:
    """``vector`` cut back into float32 arrays of the names and shapes of ``like``, in its order."""
    out: Arrays = {}
    offset = 0
    for name, value in like.items():
        size = int(np.prod(value.shape))
        out[name] = vector[offset : offset + size].reshape(value.shape).astype(np.float32)
        offset += size
    return out


def fltrust(updates: NDArray[np.float64], root: NDArray[np.float64]) -> Aggregate:
    """FLTrust's rule (Cao, Fang, Liu and Gong, NDSS 2021) on client ``updates`` ``(K, D)`` and the server's ``root``
    update ``(D,)``: each update rescaled to ``|root|`` and weighted by ``max(0, cos(update, root))``.

    A reversed update gets no weight and a boosted one no more length than the server's own, so what a client can
    move is bounded by the server's step. No positive trust at all: no step (the value is zero).
    """
    root_norm = float(np.linalg.norm(root))
    norms = np.linalg.norm(updates, axis=1)
    live = (norms > 0) & (root_norm > 0)
    cosine = np.zeros(updates.shape[0])
    cosine[live] = updates[live] @ root / (norms[live] * root_norm)
    trust = np.maximum(cosine, 0.0)
    if trust.sum() <= 0:
        return Aggregate(np.zeros(updates.shape[1]), np.zeros(updates.shape[0]))
    scale = np.zeros(updates.shape[0])
    scale[live] = root_norm / norms[live]
    shares = trust / trust.sum()
    value: NDArray[np.float64] = (shares * scale) @ updates
    return Aggregate(value, shares)


def fltrust_average(
    models: Sequence[Mapping[str, NDArray[Any]]],
    reference: Mapping[str, NDArray[Any]],
    root: Mapping[str, NDArray[Any]],
) -> tuple[Arrays, NDArray[np.float64]]:
    """``reference`` (the global weights the clients started from) plus :func:`fltrust` of the clients' updates
    against ``root - reference`` (the server's own update); returns the float32 arrays and each client's share."""
    if not models:
        raise ValueError("need at least one model")
    names = list(reference)
    base = flatten(reference, names)
    updates = np.stack([flatten(model, names) - base for model in models])
    fused = fltrust(updates, flatten(root, names) - base)
    return unflatten(base + fused.value, reference), fused.client_weights
