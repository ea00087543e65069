"""Choose a partitioner by name, as configs do (``partitioner: dirichlet`` plus its parameters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fl_kd.partition.functional import (
    dirichlet_partition,
    iid_partition,
    pathological_partition,
    quantity_skew_partition,
)

__all__ = ["PARTITIONERS", "partition"]

#: name -> (function, required parameters, optional parameters) beyond labels/num_clients/seed/min_size.
PARTITIONERS: dict[str, tuple[Callable[..., list[np.ndarray]], frozenset[str], frozenset[str]]] = {
    "iid": (iid_partition, frozenset(), frozenset()),
    "dirichlet": (dirichlet_partition, frozenset({"alpha"}), frozenset({"max_retries"})),
    "pathological": (pathological_partition, frozenset({"classes_per_client"}), frozenset()),
    "quantity_skew": (quantity_skew_partition, frozenset({"alpha"}), frozenset()),
}


def partition(
    labels: Any, name: str, num_clients: int, seed: int, min_size: int = 1, **params: Any
) -> list[np.ndarray]:
    """Partition ``labels`` among ``num_clients`` clients with the partitioner called ``name``.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example, shape ``(N,)``.
    name : str
        ``"iid"``, ``"dirichlet"`` (needs ``alpha``), ``"pathological"`` (needs
        ``classes_per_client``) or ``"quantity_skew"`` (needs ``alpha``).
    num_clients, seed, min_size
        As in the partitioner functions.
    **params
        The chosen partitioner's own parameters.

    Returns
    -------
    list[np.ndarray]
        One sorted ``int64`` index array per client.

    Raises
    ------
    ValueError
        For an unknown name, a missing or unexpected parameter, or an impossible request.
    """
    if name not in PARTITIONERS:
        raise ValueError(f"Unknown partitioner {name!r}; known partitioners: {', '.join(sorted(PARTITIONERS))}")
    function, required, optional = PARTITIONERS[name]
    missing = sorted(required - params.keys())
    unexpected = sorted(params.keys() - required - optional)
    if missing:
        raise ValueError(f"partitioner {name!r} needs parameter(s) {', '.join(missing)}")
    if unexpected:
        allowed = ", ".join(sorted(required | optional)) or "none"
        raise ValueError(
            f"partitioner {name!r} got unexpected parameter(s) {', '.join(unexpected)} (allowed: {allowed})"
        )
    return function(labels, num_clients=num_clients, seed=seed, min_size=min_size, **params)
