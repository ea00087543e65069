"""Standard image benchmarks read from a user-supplied folder: MNIST (LeCun et al., 1998) and
CIFAR-10/100 (Krizhevsky, 2009, "Learning multiple layers of features from tiny images").

No package on the project's registries ships these files, so they are only available where the user
has them (or asks for ``download=True`` on a machine with internet). Tests never download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fl_kd.data.idx import MNIST_FILE_STEMS, read_mnist_folder
from fl_kd.data.images import DIGIT_CLASSES, fetch
from fl_kd.data.splits import DatasetNotAvailableError, DatasetSplits, to_splits

__all__ = ["load_cifar10", "load_cifar100", "load_mnist"]

_DOWNLOAD_HINT = "download=True fetches the files through torchvision and needs internet access."


def _mnist_layout() -> str:
    return ", ".join(f"root/MNIST/raw/{stem}" for stem in MNIST_FILE_STEMS.values())


def load_mnist(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load MNIST (60,000 / 10,000) from torchvision's layout ``root/MNIST/raw/`` as ``(1, 28, 28)`` images.

    Files already on disk are parsed directly (gzip-compressed or not); only a download goes through
    torchvision.

    Parameters
    ----------
    root : str | Path | None (default: None)
        Folder holding ``MNIST/raw/``; required.
    download : bool (default: False)
        Fetch missing files into ``root`` through torchvision (needs internet).

    Raises
    ------
    DatasetNotAvailableError
        If ``root`` is missing or does not hold the four IDX files.
    """
    message = f"MNIST needs root=<dir> with {_mnist_layout()} (optionally .gz). {_DOWNLOAD_HINT}"
    if root is None:
        raise DatasetNotAvailableError(message)
    raw = Path(root) / "MNIST" / "raw"
    arrays = read_mnist_folder(raw)
    if arrays is None and download:
        from torchvision.datasets import MNIST

        fetch("MNIST", MNIST, root)
        arrays = read_mnist_folder(raw)
    if arrays is None:
        raise DatasetNotAvailableError(f"MNIST files not found under {raw}. {message}")
    return to_splits(
        "mnist",
        arrays["x_train"][:, None, :, :] / np.float32(255.0),
        arrays["y_train"],
        arrays["x_test"][:, None, :, :] / np.float32(255.0),
        arrays["y_test"],
        DIGIT_CLASSES,
    )


def _load_cifar(name: str, folder: str, root: str | Path | None, download: bool) -> DatasetSplits:
    message = (
        f"{name} needs root=<dir> with root/{folder}/ (the extracted python version of the archive). {_DOWNLOAD_HINT}"
    )
    if root is None:
        raise DatasetNotAvailableError(message)
    if not download and not (Path(root) / folder).is_dir():
        # Checked here so a missing folder fails fast, before the slow torchvision import.
        raise DatasetNotAvailableError(f"{name} not found: {Path(root) / folder} does not exist. {message}")
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if download:
        fetch(name, dataset_class, root)  # a failed download is one clear error, as MNIST's is
    try:
        train: Any = dataset_class(str(root), train=True, download=download)
        test: Any = dataset_class(str(root), train=False, download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise DatasetNotAvailableError(f"{name} not found or corrupt under {Path(root) / folder}. {message}") from error

    def to_chw(pixels: np.ndarray) -> np.ndarray:
        # torchvision keeps CIFAR as (N, H, W, C) uint8.
        return np.transpose(pixels, (0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)

    return to_splits(
        name,
        to_chw(train.data),
        np.asarray(train.targets),
        to_chw(test.data),
        np.asarray(test.targets),
        tuple(train.classes),
    )


def load_cifar10(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load CIFAR-10 (50,000 / 10,000, 10 classes) as ``(3, 32, 32)`` images in ``[0, 1]``.

    The files must be extracted under ``root/cifar-10-batches-py/``.

    Raises
    ------
    DatasetNotAvailableError
        If ``root`` is missing or does not hold the extracted batches.
    """
    return _load_cifar("cifar10", "cifar-10-batches-py", root, download)


def load_cifar100(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load CIFAR-100 (50,000 / 10,000, 100 fine classes) as ``(3, 32, 32)`` images in ``[0, 1]``.

    The files must be extracted under ``root/cifar-100-python/``.

    Raises
    ------
    DatasetNotAvailableError
        If ``root`` is missing or does not hold the extracted files.
    """
    return _load_cifar("cifar100", "cifar-100-python", root, download)
