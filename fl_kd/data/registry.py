"""One entry point from a dataset name to :class:`~fl_kd.data.splits.DatasetSplits`.

Configs name datasets by string; this registry is the only place that maps those strings to loaders,
so adding a dataset is one line here and one loader function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fl_kd.data.images import load_digits, load_fashion_mnist, load_mnist5k
from fl_kd.data.splits import DatasetSplits
from fl_kd.data.tabular import load_breast_cancer, load_credit
from fl_kd.data.torchvision_sets import load_cifar10, load_cifar100, load_mnist

__all__ = ["PACKAGED_DATASETS", "available_datasets", "load_dataset"]

Loader = Callable[[str | Path | None, bool], DatasetSplits]

_LOADERS: dict[str, Loader] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "mnist5k": load_mnist5k,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "breast_cancer": load_breast_cancer,
    "credit": load_credit,
}


#: Datasets shipped inside an installed package: their loaders read no ``root``.
PACKAGED_DATASETS: frozenset[str] = frozenset({"digits", "mnist5k", "breast_cancer", "credit"})


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts, sorted.

    A name being listed does not mean its files are present: ``mnist`` and ``cifar*`` need a
    ``root``, ``fashion_mnist`` the Debian package, ``mnist5k`` and ``credit`` the ``bench`` extra.
    """
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> DatasetSplits:
    """Load a dataset by name as train/test tensors.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets`.
    root : str | Path | None (default: None)
        Folder with the dataset's files, for datasets not bundled with a package.
    download : bool (default: False)
        Let torchvision fetch missing files into ``root``; off by default so nothing touches the
        network unless asked.

    Returns
    -------
    DatasetSplits
        Nothing is cached on disk; each call reads the source again.

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    DatasetNotAvailableError
        If the dataset's files or optional package are missing; the message says how to get them.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}") from None
    return loader(root, download)
