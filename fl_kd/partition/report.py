"""What a partition looks like: samples per client per class and one label-skew figure.

Modelled on FedLab's partition report. The skew figure is the mean over clients of the total-variation
distance ``TV(p_k, p) = 0.5 * sum_c |p_k(c) - p(c)|`` between client ``k``'s label distribution and
the global one: 0 for a perfectly IID split, approaching ``1 - max_c p(c)`` when each client holds a
single class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_kd.data.labels import as_label_array

__all__ = ["PartitionReport"]


@dataclass(frozen=True)
class PartitionReport:
    """Class counts per client and how far each client's label distribution is from the global one.

    Attributes
    ----------
    counts : np.ndarray
        ``int64`` ``(num_clients, num_classes)``: examples of each class held by each client.
    sizes : np.ndarray
        ``int64`` ``(num_clients,)``: examples per client.
    tv : np.ndarray
        ``float64`` ``(num_clients,)``: total-variation distance of each client's label distribution
        from the global one; ``nan`` for a client without examples.
    label_skew : float
        Mean of ``tv`` over non-empty clients (0 = IID).
    """

    counts: np.ndarray
    sizes: np.ndarray
    tv: np.ndarray
    label_skew: float

    @property
    def num_clients(self) -> int:
        """Number of clients (rows of ``counts``)."""
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (columns of ``counts``)."""
        return int(self.counts.shape[1])

    @classmethod
    def from_partition(cls, labels: Any, parts: Sequence[np.ndarray], num_classes: int) -> PartitionReport:
        """Build the report of ``parts`` over ``labels``.

        Parameters
        ----------
        labels : np.ndarray | torch.Tensor
            Class of each example, shape ``(N,)``, in ``[0, num_classes)``.
        parts : Sequence[np.ndarray]
            One index array per client.
        num_classes : int
            Number of classes ``C`` (columns of the report, including classes nobody holds).

        Raises
        ------
        ValueError
            If a label is outside ``[0, num_classes)`` or a part indexes outside ``labels``.
        """
        label_array = as_label_array(labels)
        if num_classes < 1 or (label_array.size and label_array.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}); found max {label_array.max()}")
        counts = np.zeros((len(parts), num_classes), dtype=np.int64)
        for client, part in enumerate(parts):
            indices = np.asarray(part, dtype=np.int64)
            if indices.size and (indices.min() < 0 or indices.max() >= len(label_array)):
                raise ValueError(f"part {client} indexes outside the {len(label_array)} labels")
            counts[client] = np.bincount(label_array[indices], minlength=num_classes)
        sizes = counts.sum(axis=1)
        global_distribution = np.bincount(label_array, minlength=num_classes) / max(len(label_array), 1)
        tv = np.full(len(parts), np.nan)
        non_empty = sizes > 0
        client_distribution = counts[non_empty] / sizes[non_empty, None]
        tv[non_empty] = 0.5 * np.abs(client_distribution - global_distribution).sum(axis=1)
        label_skew = float(tv[non_empty].mean()) if non_empty.any() else float("nan")
        return cls(counts=counts, sizes=sizes, tv=tv, label_skew=label_skew)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and floats) for JSON and logs; empty clients' ``tv`` is ``None``."""
        return {
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "counts": self.counts.tolist(),
            "sizes": self.sizes.tolist(),
            "tv": [None if np.isnan(value) else float(value) for value in self.tv],
            "label_skew": self.label_skew,
        }

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, creating parent folders."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["client", "size", *(f"c{c}" for c in range(self.num_classes)), "tv"]
        rows = [
            [str(client), str(size), *(str(n) for n in row), "-" if np.isnan(tv) else f"{tv:.3f}"]
            for client, (size, row, tv) in enumerate(zip(self.sizes, self.counts, self.tv, strict=True))
        ]
        return header, rows

    def to_text(self) -> str:
        """Fixed-width table: clients as rows, classes as columns, then size and TV, then the skew."""
        header, rows = self._rows()
        widths = [max(len(line[col]) for line in [header, *rows]) for col in range(len(header))]
        lines = [
            "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *rows]
        ]
        lines.append(f"label skew (mean TV to global): {self.label_skew:.4f}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The same table in Markdown, for run summaries and READMEs."""
        header, rows = self._rows()
        lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
        lines.append(f"Label skew (mean TV to global): **{self.label_skew:.4f}**")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()
