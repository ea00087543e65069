"""Robust aggregation of model weights: FedAvg's step with a robust rule instead of the sample-weighted mean.

Each client's weights are flattened, in ``state_dict`` order, into one row of a ``(K, D)`` matrix and fused by a
rule of :mod:`fl_kd.kd.robust` (coordinate-wise median, trimmed mean, Krum, Multi-Krum; what Flower's
``FedMedian``, ``FedTrimmedAvg``, ``Krum`` and ``MultiKrum`` compute), then cut back into arrays of their shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.robust import ROBUST_RULES, RobustSettings

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
    names = list(models[0])
    shapes = [models[0][name].shape for name in names]
    matrix = np.stack(
        [np.concatenate([np.asarray(model[name], dtype=np.float64).ravel() for name in names]) for model in models]
    )
    fused = ROBUST_RULES.get(rule)(matrix, np.asarray(sample_counts, dtype=np.float64), settings or RobustSettings())
    out: Arrays = {}
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        size = int(np.prod(shape))
        out[name] = fused.value[offset : offset + size].reshape(shape).astype(np.float32)
        offset += size
    return out, fused.client_weights
