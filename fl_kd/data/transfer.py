"""The transfer set: shared data on which knowledge moves between server and clients.

In federated distillation (Li & Wang, 2019, "FedMD: Heterogenous federated learning via model
distillation"; Lin et al., 2020, "Ensemble distillation for robust model fusion in federated
learning") clients and server exchange predictions on a common dataset instead of weights. This
module carves that transfer set out of a labelled pool, and builds per-client test subsets for
scoring clients on their own label distribution (as in personalised FL evaluations).

Whether the transfer set is labelled or unlabelled is the caller's choice: the indices are the
same either way, and the transfer labels are only read by labelled methods (e.g. FedMD's
pre-training); unlabelled methods such as ensemble distillation must ignore them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_kd.data.labels import allocate_proportionally, as_label_array
from fl_kd.data.splits import DatasetError

__all__ = ["personalised_test_indices", "split_transfer_set"]


def split_transfer_set(labels: Any, size: int, seed: int, stratified: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into a transfer set of ``size`` examples and the private remainder.

    Parameters
    ----------
    labels : np.ndarray | torch.Tensor
        Class of each example in the pool, shape ``(N,)``.
    size : int
        Number of transfer examples, ``0 <= size <= N``; 0 gives an empty transfer set.
    seed : int
        Seed of the draw; the same seed gives the same split.
    stratified : bool (default: True)
        Give each class its proportional share of the transfer set (largest-remainder rounding),
        so a small transfer set still covers every class; otherwise draw uniformly.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(transfer_idx, private_idx)``: sorted ``int64`` arrays, disjoint, together ``range(N)``.
        Partition only ``private_idx`` among clients so no example is both shared and private.

    Raises
    ------
    ValueError
        If ``size`` is negative or larger than the pool, or ``labels`` are not class indices.
    """
    label_array = as_label_array(labels)
    num_samples = len(label_array)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not 0 <= size <= num_samples:
        raise ValueError(f"transfer set size must be in [0, {num_samples}] (the pool size), got {size}")
    rng = np.random.default_rng(seed)
    if stratified and size > 0:
        classes, class_counts = np.unique(label_array, return_counts=True)
        per_class = allocate_proportionally(int(size), class_counts)
        chosen = [
            rng.choice(np.flatnonzero(label_array == cls), size=int(take), replace=False)
            for cls, take in zip(classes, per_class, strict=True)
        ]
        transfer_idx = np.concatenate(chosen)
    else:
        transfer_idx = rng.choice(num_samples, size=int(size), replace=False)
    transfer_idx = np.sort(transfer_idx).astype(np.int64)
    private_mask = np.ones(num_samples, dtype=bool)
    private_mask[transfer_idx] = False
    return transfer_idx, np.flatnonzero(private_mask).astype(np.int64)


MAX_TEST_REPEATS = 10
"""A personalised test set holds at most this many times the test split's size: it repeats examples only where a class
runs out (a small split such as breast_cancer's 114 test rows under the default 200), and a size far beyond the split
would only fill memory with repeats."""


def personalised_test_indices(test_labels: Any, class_counts: Any, size: int, seed: int) -> np.ndarray:
    """Draw a test subset whose label distribution follows one client's training data.

    Scoring a client on the global test set penalises it for classes it never sees; this subset
    instead measures how well the client serves *its own* distribution.

    Each class receives ``size * count_c / sum(counts)`` examples (largest-remainder rounding);
    classes absent from the client receive none. Within a class, examples are drawn without
    replacement; only when the test set holds fewer examples of that class than needed are all of
    them taken and the rest drawn with replacement.

    Parameters
    ----------
    test_labels : np.ndarray | torch.Tensor
        Class of each test example, shape ``(N_test,)``, in ``[0, C)``.
    class_counts : np.ndarray
        The client's number of training examples per class, shape ``(C,)``.
    size : int
        Number of indices to return.
    seed : int
        Seed of the draw.

    Returns
    -------
    np.ndarray
        Sorted ``int64`` test indices of shape ``(size,)``; may repeat indices of a class that ran out.

    Raises
    ------
    ValueError
        If ``size`` is negative or above :data:`MAX_TEST_REPEATS` times the test split's size, ``class_counts`` is
        not a non-negative ``(C,)`` array with a positive sum or a test label is ``>= C``;
        :class:`~fl_kd.data.splits.DatasetError` (a ``ValueError``) if the client needs a class the test set lacks.
    """
    label_array = as_label_array(test_labels, name="test_labels")
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must have shape (C,), got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer) and not np.all(np.mod(counts, 1) == 0):
        raise ValueError("class_counts must hold whole numbers of examples")
    counts = counts.astype(np.int64)
    if counts.min() < 0 or counts.sum() == 0:
        raise ValueError(f"class_counts must be non-negative with a positive sum, got {counts.tolist()}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    if size > MAX_TEST_REPEATS * max(label_array.size, 1):
        raise ValueError(
            f"size {size} is more than {MAX_TEST_REPEATS}x the test split's {label_array.size} examples: beyond the "
            "test split a draw only repeats its examples"
        )
    if label_array.size and label_array.max() >= counts.size:
        raise ValueError(f"test label {label_array.max()} is outside the {counts.size} classes of class_counts")
    rng = np.random.default_rng(seed)
    per_class = allocate_proportionally(int(size), counts)
    chosen: list[np.ndarray] = []
    for cls in np.flatnonzero(per_class):
        pool = np.flatnonzero(label_array == cls)
        need = int(per_class[cls])
        if pool.size == 0:
            raise DatasetError(  # the data's fault, not the caller's: one clear error, not a traceback
                f"the test split has no example of class {cls}, which a client trains on (its personalised test set "
                f"needs {need}): the dataset's test files lack a class"
            )
        if need <= pool.size:
            chosen.append(rng.choice(pool, size=need, replace=False))
        else:
            chosen.append(rng.permutation(pool))
            chosen.append(rng.choice(pool, size=need - pool.size, replace=True))
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
