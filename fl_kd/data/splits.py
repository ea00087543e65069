"""The container every dataset loader returns, and the helpers loaders share.

Loaders differ in where their bytes come from; what they hand back is always the same
:class:`DatasetSplits`, so partitioners, models and the transfer set never special-case a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DatasetError", "DatasetNotAvailableError", "DatasetSplits", "standardise", "stratified_split", "to_splits"]


class DatasetNotAvailableError(FileNotFoundError):
    """A known dataset whose files or optional package are missing on this machine.

    Subclasses :class:`FileNotFoundError` so callers that already handle missing files keep working;
    the message always says which files or which ``pip install`` would make the dataset available.
    """


class DatasetError(ValueError):
    """A dataset whose files are there but cannot be used: unreadable, corrupt, truncated, of another shape, or
    holding values out of range (labels outside the classes, NaN features).

    The message names the file or the split. Such data must stop a run before it starts: a label beyond the last
    class, or one NaN pixel, reaches every weight within a few steps.
    """


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset as train and test tensors plus the metadata models need to be built for it.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"digits"``.
    x_train, x_test : torch.Tensor
        ``float32`` of shape ``(N, *input_shape)``. Images are ``(C, H, W)`` in ``[0, 1]``;
        tabular features are standardised with training-split statistics.
    y_train, y_test : torch.Tensor
        ``int64`` class indices of shape ``(N,)`` in ``[0, num_classes)``.
    num_classes : int
        Number of classes, which sizes the models' output layer.
    input_shape : tuple[int, ...]
        Shape of one example, ``(C, H, W)`` for images and ``(D,)`` for tabular data.
    class_names : tuple[str, ...]
        Human-readable name of each class, indexed by label.
    feature_names : tuple[str, ...] | None
        Column names of tabular data (needed to split columns between VFL feature parties);
        ``None`` for images.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Catch loader bugs at construction, not three modules later inside a training loop.
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise DatasetError(f"{self.name}/{split}: expected float32 x and int64 y, got {x.dtype}, {y.dtype}")
            if tuple(x.shape[1:]) != tuple(self.input_shape) or x.shape[0] != y.shape[0] or y.ndim != 1:
                raise DatasetError(
                    f"{self.name}/{split}: x {tuple(x.shape)} and y {tuple(y.shape)} do not match "
                    f"input_shape {self.input_shape}"
                )
            if y.numel() == 0:
                raise DatasetError(f"{self.name}/{split}: the split holds no example")
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= self.num_classes:
                classes = self.num_classes
                raise DatasetError(f"{self.name}/{split}: labels must lie in [0, {classes}), got {low}..{high}")
            if not bool(torch.isfinite(x).all()):
                raise DatasetError(f"{self.name}/{split}: the features hold NaN or infinite values")
        if len(self.class_names) != self.num_classes:
            raise DatasetError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.feature_names is not None and (
            len(self.input_shape) != 1 or len(self.feature_names) != self.input_shape[0]
        ):
            raise DatasetError(f"{self.name}: feature_names must name each of the {self.input_shape} columns")

    @property
    def is_image(self) -> bool:
        """Whether examples are ``(C, H, W)`` images (so convolutional models apply)."""
        return len(self.input_shape) == 3

    def __repr__(self) -> str:
        # The default repr would print whole tensors.
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def stratified_split(
    num_samples: int, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_samples)`` into sorted train and test indices with equal class shares.

    Used for datasets that ship without an official test split, so every run of every method
    is scored on the same held-out examples.

    Parameters
    ----------
    num_samples : int
        Number of examples, ``N``.
    labels : np.ndarray
        Class of each example, shape ``(N,)``.
    test_fraction : float
        Share of examples held out for testing.
    seed : int
        Seed of the split; a fixed seed makes the split part of the dataset's definition.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(train_idx, test_idx)``, sorted ``int64``.
    """
    # Imported here so `import fl_kd.data` stays cheap for code that only needs the transfer set.
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(num_samples), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale columns to zero mean and unit variance using training statistics only.

    Statistics come from the training split so no information about the test split leaks into
    the features. Constant columns keep a scale of 1 instead of dividing by zero.

    Parameters
    ----------
    x_train, x_test : np.ndarray
        Feature matrices of shape ``(N_train, D)`` and ``(N_test, D)``.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        Standardised ``float32`` copies, same shapes.
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def to_splits(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    feature_names: tuple[str, ...] | None = None,
) -> DatasetSplits:
    """Wrap numpy arrays into a :class:`DatasetSplits`, fixing dtypes in one place.

    Labels stored as floats must be whole numbers: a cast would silently turn 0.7 into class 0.
    """
    for split, labels in (("train", np.asarray(y_train)), ("test", np.asarray(y_test))):
        if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.rint(labels)).all()):
            raise DatasetError(f"{name}/{split}: labels must be whole class indices, got {labels.dtype} fractions")
    x_train_t = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    x_test_t = torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32))
    return DatasetSplits(
        name=name,
        x_train=x_train_t,
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=x_test_t,
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in x_train_t.shape[1:]),
        class_names=tuple(class_names),
        feature_names=None if feature_names is None else tuple(feature_names),
    )
