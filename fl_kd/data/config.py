"""Which dataset a run reads: the ``dataset`` config group of every entry point."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fl_kd.config import absolute_path, check_choice
from fl_kd.data.registry import PACKAGED_DATASETS, available_datasets

log = logging.getLogger(__name__)


@dataclass
class DatasetConfig:
    """A dataset by registered name.

    Attributes
    ----------
    name : str (default: "digits")
        Name for :func:`fl_kd.data.load_dataset`; ``digits`` and ``breast_cancer`` are embedded.
    root : str | None (default: None)
        Folder of a dataset that is not embedded (None: the loader's default location); a relative one is taken
        from the folder the command runs in. A dataset shipped inside a package reads no root: one given for it is
        ignored with a warning (so that a sweep over datasets can set one root for those that read it), since the
        run does not read the data the user may have meant.
    download : bool (default: False)
        Let torchvision download into ``root``; off, since nothing is fetched unless asked. Ignored with a warning
        for an embedded dataset, as ``root`` is.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset.name", self.name, available_datasets())
        if self.root is not None and self.name in PACKAGED_DATASETS:
            log.warning("dataset.root=%s is ignored: dataset=%s ships inside a package and reads no root", self.root,
                        self.name)  # fmt: skip
        if self.download and self.name in PACKAGED_DATASETS:
            log.warning("dataset.download=true is ignored: dataset=%s ships inside a package", self.name)
        self.root = absolute_path(self.root)
