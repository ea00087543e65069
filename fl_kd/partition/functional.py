"""Partitioners: split a label array among simulated clients, one index array per client.

Pure functions in the style of FedLab's ``functional`` module, written for in-memory label arrays
(``flwr-datasets`` partitioners need a Hugging Face ``Dataset`` and are not a core dependency).

- ``iid_partition``: uniform random split, sizes differ by at most one.
- ``dirichlet_partition``: label skew of Hsu, Qi & Brown (2019), "Measuring the effects of
  non-identical data distribution for federated visual classification": for every class, client
  proportions are drawn from ``Dir(alpha)``.
- ``pathological_partition``: each client sees at most ``k`` classes, the non-IID setting of
  McMahan et al. (2017), "Communication-efficient learning of deep networks from decentralized data".
- ``quantity_skew_partition``: client sizes from ``Dir(alpha)`` with IID labels inside each client,
  the quantity-skew setting of Li et al. (2022), "Federated learning on non-IID data silos: an
  experimental study" (NIID-Bench).

Every function returns sorted, disjoint ``int64`` index arrays whose union is ``range(N)``, is
deterministic in ``seed``, and raises ``ValueError`` (saying what is wrong) for impossible requests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fl_kd.data.labels import as_label_array

__all__ = [
    "dirichlet_partition",
    "iid_partition",
    "pathological_partition",
    "quantity_skew_partition",
]

DEFAULT_MAX_RETRIES = 1000


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_common(labels: Any, num_clients: int, min_size: int) -> np.ndarray:
    """Validate what every partitioner needs and return the labels as ``int64`` ``(N,)``."""
    label_array = as_label_array(labels)
    num_samples = len(label_array)
    if not _is_int(num_clients) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if not _is_int(min_size) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if num_clients > num_samples:
        raise ValueError(f"cannot split {num_samples} samples among {num_clients} clients (more clients than samples)")
    if num_clients * min_size > num_samples:
        raise ValueError(
            f"{num_clients} clients x min_size {min_size} = {num_clients * min_size} exceeds the "
            f"{num_samples} available samples"
        )
    return label_array


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not (math.isfinite(float(alpha)) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number (Dirichlet concentration), got {alpha!r}")
    return float(alpha)


def _finish(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Merge each client's chunks into one sorted ``int64`` array."""
    return [
        np.sort(np.concatenate(client_chunks)).astype(np.int64) if client_chunks else np.empty(0, np.int64)
        for client_chunks in chunks
    ]


def iid_partition(labels: Any, num_clients: int, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Split examples uniformly at random into ``num_clients`` parts of near-equal size.

    The IID baseline: each client's label distribution matches the global one up to sampling noise.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example, shape ``(N,)``.
    num_clients : int
        Number of clients ``K``.
    seed : int
        Seed of the shuffle.
    min_size : int (default: 1)
        Smallest allowed client; always met once ``K * min_size <= N`` since sizes are
        ``floor(N / K)`` or ``ceil(N / K)``.

    Returns
    -------
    list[np.ndarray]
        ``K`` sorted ``int64`` index arrays, disjoint, together ``range(N)``.
    """
    label_array = _check_common(labels, num_clients, min_size)
    order = np.random.default_rng(seed).permutation(len(label_array))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: Any,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> list[np.ndarray]:
    """Label-skewed split: for every class, client shares are drawn from ``Dir(alpha * 1_K)``.

    Small ``alpha`` (e.g. 0.1) concentrates each class on a few clients; large ``alpha`` (e.g. 100)
    approaches IID. A draw leaving any client below ``min_size`` is rejected and redrawn from the
    same generator (as FedLab and NIID-Bench do), so the result stays deterministic in ``seed``.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example, shape ``(N,)``.
    num_clients : int
        Number of clients ``K``.
    alpha : float
        Dirichlet concentration, ``> 0``.
    seed : int
        Seed of the draws.
    min_size : int (default: 1)
        Smallest allowed client.
    max_retries : int (default: 1000)
        Number of draws tried before giving up.

    Returns
    -------
    list[np.ndarray]
        ``K`` sorted ``int64`` index arrays, disjoint, together ``range(N)``.

    Raises
    ------
    ValueError
        For invalid arguments, or when ``max_retries`` draws all left a client below ``min_size``.
    """
    label_array = _check_common(labels, num_clients, min_size)
    concentration = _check_alpha(alpha)
    if not _is_int(max_retries) or max_retries < 1:
        raise ValueError(f"max_retries must be an integer >= 1, got {max_retries!r}")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(label_array == cls) for cls in np.unique(label_array)]
    class_sizes = np.array([len(class_idx) for class_idx in by_class])
    smallest = 0
    for _ in range(max_retries):
        shares = rng.dirichlet(np.full(num_clients, concentration), size=len(by_class))  # (C, K)
        # Cut points into each class's examples; sizes are known before any shuffling, so a
        # rejected draw costs O(C * K) rather than O(N).
        bounds = np.zeros((len(by_class), num_clients + 1), dtype=np.int64)
        bounds[:, 1:-1] = (np.cumsum(shares, axis=1)[:, :-1] * class_sizes[:, None]).astype(np.int64)
        bounds[:, -1] = class_sizes
        smallest = int(np.diff(bounds, axis=1).sum(axis=0).min())
        if smallest >= min_size:
            chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for class_idx, cuts in zip(by_class, bounds, strict=True):
                for client, piece in enumerate(np.split(rng.permutation(class_idx), cuts[1:-1])):
                    chunks[client].append(piece)
            return _finish(chunks)
    raise ValueError(
        f"dirichlet_partition: after {max_retries} draws with alpha={alpha} some client still had fewer than "
        f"min_size={min_size} samples (last draw's smallest client: {smallest}); raise alpha, or lower "
        "min_size or num_clients (a caller of this function may also allow more max_retries)"
    )


def pathological_partition(
    labels: Any, num_clients: int, classes_per_client: int, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Split so that each client holds examples of at most ``classes_per_client`` classes.

    Clients pick their classes in turn, each taking the ``k`` classes held by the fewest clients so
    far (ties broken at random). This keeps class loads within one of each other, so every class is
    covered once ``K * k >= C``, while pairings stay random. Unlike sorting into shards (McMahan et
    al.), no shard can straddle two classes, so the ``k``-class bound is exact. Each class's examples
    are shuffled and divided evenly among the clients holding it.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example, shape ``(N,)``.
    num_clients : int
        Number of clients ``K``; ``K * k`` must be ``>= C`` so every example finds a client.
    classes_per_client : int
        ``k``, between 1 and the number of classes present in ``labels``.
    seed : int
        Seed of the class choice and of the shuffles.
    min_size : int (default: 1)
        Smallest allowed client.

    Returns
    -------
    list[np.ndarray]
        ``K`` sorted ``int64`` index arrays, disjoint, together ``range(N)``.

    Raises
    ------
    ValueError
        For invalid arguments, or if the split leaves a client below ``min_size``.
    """
    label_array = _check_common(labels, num_clients, min_size)
    classes = np.unique(label_array)
    num_classes = len(classes)
    if not _is_int(classes_per_client) or not 1 <= classes_per_client <= num_classes:
        raise ValueError(
            f"classes_per_client must be an integer in [1, {num_classes}] (the classes present), "
            f"got {classes_per_client!r}"
        )
    if num_clients * classes_per_client < num_classes:
        raise ValueError(
            f"{num_clients} clients x {classes_per_client} classes each cannot cover all "
            f"{num_classes} classes; raise num_clients or classes_per_client"
        )
    rng = np.random.default_rng(seed)
    loads = np.zeros(num_classes, dtype=np.int64)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client in range(num_clients):
        # Adding a uniform [0, 1) jitter breaks ties within a load level without crossing levels.
        picked = np.argsort(loads + rng.random(num_classes))[:classes_per_client]
        loads[picked] += 1
        for position in picked:
            holders[int(position)].append(client)
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for position, cls in enumerate(classes):
        shuffled = rng.permutation(np.flatnonzero(label_array == cls))
        clients_of_class = holders[position]
        for client, piece in zip(clients_of_class, np.array_split(shuffled, len(clients_of_class)), strict=True):
            chunks[client].append(piece)
    parts = _finish(chunks)
    smallest = min(len(part) for part in parts)
    if smallest < min_size:
        raise ValueError(
            f"pathological_partition: a client received only {smallest} samples (< min_size={min_size}); "
            "the classes are too small for this many clients per class"
        )
    return parts


def quantity_skew_partition(
    labels: Any, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Split with client sizes drawn from ``Dir(alpha)`` and IID labels inside each client.

    Each client first receives ``min_size`` examples; the remaining ``N - K * min_size`` are spread by
    a multinomial draw with ``Dir(alpha)`` probabilities. Reserving the minimum up front means small
    ``alpha`` never needs rejection sampling, and the result stays deterministic in ``seed``.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example, shape ``(N,)``.
    num_clients : int
        Number of clients ``K``.
    alpha : float
        Dirichlet concentration of the size shares, ``> 0``; small values give very unequal sizes.
    seed : int
        Seed of the draws.
    min_size : int (default: 1)
        Smallest allowed client.

    Returns
    -------
    list[np.ndarray]
        ``K`` sorted ``int64`` index arrays, disjoint, together ``range(N)``.
    """
    label_array = _check_common(labels, num_clients, min_size)
    concentration = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    num_samples = len(label_array)
    shares = rng.dirichlet(np.full(num_clients, concentration))
    sizes = min_size + rng.multinomial(num_samples - num_clients * min_size, shares)
    order = rng.permutation(num_samples)
    return [np.sort(part).astype(np.int64) for part in np.split(order, np.cumsum(sizes)[:-1])]
