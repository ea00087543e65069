"""How private data is split among clients: the ``partition`` config group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fl_kd.config import check_choice, check_range, require, require_defaults_unless
from fl_kd.partition.dispatch import PARTITIONERS


@dataclass
class PartitionConfig:
    """A partitioner by name plus its own parameters.

    Attributes
    ----------
    name : str (default: "dirichlet")
        One of :data:`fl_kd.partition.PARTITIONERS`.
    alpha : float | None (default: 0.5)
        Dirichlet concentration of ``dirichlet`` (label skew) and ``quantity_skew`` (sizes); lower is more skewed.
    classes_per_client : int | None (default: None)
        Classes each client holds under ``pathological``.
    min_size : int (default: 10)
        Smallest private set per client.
    """

    name: str = "dirichlet"
    alpha: float | None = 0.5
    classes_per_client: int | None = None
    min_size: int = 10

    def __post_init__(self) -> None:
        check_choice("partition.name", self.name, PARTITIONERS)
        if self.alpha is not None:
            check_range("partition.alpha", self.alpha, low=0.0, low_open=True)
        if self.classes_per_client is not None:
            check_range("partition.classes_per_client", self.classes_per_client, low=1)
        check_range("partition.min_size", self.min_size, low=1)  # a client needs data to train and be tested on
        _, required, optional = PARTITIONERS[self.name]
        for param in sorted(required):
            require(getattr(self, param) is not None, f"partition.{param} is required by partition.name={self.name}")
        for param in ("alpha", "classes_per_client"):
            why = f"is not read by partition.name={self.name}"
            require_defaults_unless(self, (param,), param in required | optional, why, prefix="partition.")

    def params(self) -> dict[str, Any]:
        """Keyword arguments of the chosen partitioner: the parameters it takes, where set."""
        _, required, optional = PARTITIONERS[self.name]
        return {
            key: getattr(self, key)
            for key in ("alpha", "classes_per_client")
            if key in required | optional and getattr(self, key) is not None
        }
