"""Which dataset a run reads: the ``dataset`` config group of every entry point."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_choice
from fl_kd.data.registry import available_datasets


@dataclass
class DatasetConfig:
    """A dataset by registered name.

    Attributes
    ----------
    name : str (default: "digits")
        Name for :func:`fl_kd.data.load_dataset`; ``digits`` and ``breast_cancer`` are embedded.
    root : str | None (default: None)
        Folder of a dataset that is not embedded (None: the loader's default location).
    download : bool (default: False)
        Let torchvision download into ``root``; off, since nothing is fetched unless asked.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset.name", self.name, available_datasets())
