"""Model weights as named arrays: how weight-sharing strategies (FedAvg, FedDF, Fed-ET) move and average models.

Weights travel as float32 numpy arrays keyed by ``state_dict`` name. :func:`check_weights` is the server's screen
for an answer (names, shapes, dtype, finiteness), :func:`weighted_average` the FedAvg step (McMahan et al., 2017),
used per architecture by FedDF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE, check_bounded

Arrays = dict[str, NDArray[Any]]


def model_arrays(model: nn.Module) -> Arrays:
    """The model's ``state_dict`` as float32 numpy arrays (copies), in ``state_dict`` order."""
    return {
        name: value.detach().cpu().numpy().astype(np.float32, copy=True) for name, value in model.state_dict().items()
    }


def load_arrays(model: nn.Module, arrays: Mapping[str, NDArray[Any]], max_abs: float = DEFAULT_MAX_ABS_VALUE) -> None:
    """Load checked arrays into ``model`` (raises ``ValueError`` saying why, before any weight changes).

    ``max_abs`` must be the run's ``max_abs_value``: a run allowing larger weights than the default would otherwise
    refuse, here, a model its own screen accepted.
    """
    reason = check_weights(arrays, model_arrays(model), max_abs)
    if reason is not None:
        raise ValueError(reason)
    state = {name: torch.from_numpy(np.array(arrays[name], dtype=np.float32)) for name in model.state_dict()}
    model.load_state_dict(state)


def check_weights(
    arrays: Mapping[str, Any], reference: Mapping[str, NDArray[Any]], max_abs: float = DEFAULT_MAX_ABS_VALUE
) -> str | None:
    """Why ``arrays`` cannot stand for a model shaped like ``reference``, or None when they can.

    Each weight must be a finite float32 array of the reference's shape, no entry beyond ``max_abs`` in absolute
    value (an honest model is far inside it; a scaled or overflowing update is not).
    """
    missing = [name for name in reference if name not in arrays]
    unexpected = [name for name in arrays if name not in reference]
    if missing or unexpected:
        return f"weights do not match the architecture ({len(missing)} missing, {len(unexpected)} unexpected names)"
    for name, expected in reference.items():
        value = arrays[name]
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return f"weight {name} must be a float32 array, got {getattr(value, 'dtype', type(value).__name__)}"
        if value.shape != expected.shape:
            return f"weight {name} has shape {value.shape}, expected {expected.shape}"
        reason = check_bounded({f"weight {name}": value}, max_abs)
        if reason is not None:
            return reason
    return None


#: The share of the answer bound a model the server publishes may use. Clients train from what it publishes, and
#: their answers must stay inside the bound: a published model at the bound (one accepted answer there is enough)
#: would have every later honest answer refused, and the run would never learn again.
PUBLISH_HEADROOM = 0.5


def within_headroom(arrays: Mapping[str, NDArray[Any]], max_abs: float = DEFAULT_MAX_ABS_VALUE) -> bool:
    """Whether every weight of ``arrays`` is within ``PUBLISH_HEADROOM * max_abs`` in absolute value."""
    limit = PUBLISH_HEADROOM * max_abs
    return all(float(np.abs(value).max(initial=0.0)) <= limit for value in arrays.values())


def weighted_average(models: Sequence[Mapping[str, NDArray[Any]]], weights: Sequence[float]) -> Arrays:
    """``sum_k w_k * models[k] / sum_k w_k`` per array (FedAvg's aggregation, weights e.g. sample counts).

    Summed in float64 in the given order, so the result does not depend on how a runtime batches the answers.
    """
    if not models or len(models) != len(weights):
        raise ValueError(f"need one weight per model and at least one model; got {len(models)} and {len(weights)}")
    total = math.fsum(weights)
    if not total > 0 or any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, non-negative and not all zero; got {list(weights)}")
    out: Arrays = {}
    for name in models[0]:
        acc = np.zeros(models[0][name].shape, dtype=np.float64)
        for model, weight in zip(models, weights, strict=True):
            acc += (weight / total) * model[name].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out
