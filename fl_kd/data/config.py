"""Which dataset a run reads: the ``dataset`` config group of every entry point."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_choice, require
from fl_kd.data.registry import PACKAGED_DATASETS, available_datasets


@dataclass
class DatasetConfig:
    """A dataset by registered name.

    Attributes
    ----------
    name : str (default: "digits")
        Name for :func:`fl_kd.data.load_dataset`; ``digits`` and ``breast_cancer`` are embedded.
    root : str | None (default: None)
        Folder of a dataset that is not embedded (None: the loader's default location). Refused for a dataset
        shipped inside a package, whose loader would ignore it: the run would not read the data the user named.
    download : bool (default: False)
        Let torchvision download into ``root``; off, since nothing is fetched unless asked.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset.name", self.name, available_datasets())
        require(
            self.root is None or self.name not in PACKAGED_DATASETS,
            f"dataset.root={self.root}: dataset={self.name} ships inside a package and reads no root",
        )
