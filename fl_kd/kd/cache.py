"""Knowledge cache of FedGEMS (Cheng et al., 2021, arXiv:2110.11027).

The server keeps, for every transfer sample it has once classified correctly, the logits it produced then.
When it later forgets such a sample it distils from its own earlier knowledge instead of asking the clients
again, which is why the uplink shrinks as the cache fills.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor


class KnowledgeCache:
    """Per-sample logits memory ``M`` of shape ``(N, C)`` with a ``filled`` mask ``(N,)``.

    Empty rows hold zeros rather than the ``+inf`` sentinel of the reference code, so masked arithmetic on
    them can never produce NaN gradients; ``filled`` is the single source of truth.

    Parameters
    ----------
    num_samples : int
        Size N of the transfer set.
    num_classes : int
        Number of classes C.
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        if num_samples < 0 or num_classes < 1:
            raise ValueError(f"need num_samples >= 0 and num_classes >= 1, got {num_samples}, {num_classes}")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self._logits = torch.zeros(num_samples, num_classes, dtype=torch.float32)
        self._filled = torch.zeros(num_samples, dtype=torch.bool)

    @property
    def filled(self) -> Tensor:
        """``(N,)`` bool, True where the cache holds knowledge (a read-only copy)."""
        return self._filled.clone()

    @property
    def num_filled(self) -> int:
        """How many transfer samples are cached."""
        return int(self._filled.sum())

    def _positions(self, positions: ArrayLike | Tensor) -> Tensor:
        index = positions if isinstance(positions, Tensor) else torch.as_tensor(np.asarray(positions))
        index = index.reshape(-1).to(device="cpu")
        if index.numel() and (index.dtype.is_floating_point or index.dtype == torch.bool):
            raise ValueError(f"positions must be integers, got dtype {index.dtype}")
        index = index.long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_samples):
            raise ValueError(
                f"positions must lie in [0, {self.num_samples}), got min {int(index.min())} and max {int(index.max())}"
            )
        return index

    def is_filled(self, positions: ArrayLike | Tensor) -> Tensor:
        """``(n,)`` bool mask of which ``positions`` are cached."""
        return self._filled[self._positions(positions)]

    def update(self, positions: ArrayLike | Tensor, logits: Tensor) -> None:
        """Store ``logits`` ``(n, C)`` at ``positions`` ``(n,)``, overwriting older knowledge."""
        index = self._positions(positions)
        if logits.shape != (index.numel(), self.num_classes):
            raise ValueError(
                f"logits must be (n, C) = ({index.numel()}, {self.num_classes}), got {tuple(logits.shape)}"
            )
        values = logits.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("refusing to cache non-finite logits")
        self._logits[index] = values
        self._filled[index] = True

    def forget(self, positions: ArrayLike | Tensor) -> None:
        """Empty the cache at ``positions`` ``(n,)``: knowledge found outdated must not be distilled again."""
        index = self._positions(positions)
        self._logits[index] = 0.0
        self._filled[index] = False

    def get(self, positions: ArrayLike | Tensor) -> Tensor:
        """Cached logits ``(n, C)`` at ``positions``; raises ``KeyError`` if any of them is empty."""
        index = self._positions(positions)
        missing = ~self._filled[index]
        if bool(missing.any()):
            raise KeyError(f"knowledge cache is empty at positions {index[missing][:10].tolist()}")
        return self._logits[index].clone()

    def lookup(self, positions: ArrayLike | Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(n, C)`` (zeros where empty) and filled mask ``(n,)``: the batched form for training."""
        index = self._positions(positions)
        return self._logits[index].clone(), self._filled[index].clone()

    def state_dict(self) -> dict[str, NDArray[np.generic]]:
        """NumPy copies of the cache, so a Flower client or server can keep it in its record state."""
        return {"logits": self._logits.numpy().copy(), "filled": self._filled.numpy().copy()}

    def check_state_dict(self, state: dict[str, NDArray[np.generic]]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``state`` as arrays if it fits this cache (shapes, finite logits); else ``ValueError`` saying why."""
        logits = np.asarray(state["logits"], dtype=np.float32)
        filled = np.asarray(state["filled"], dtype=bool)
        if logits.shape != (self.num_samples, self.num_classes) or filled.shape != (self.num_samples,):
            raise ValueError(
                f"cache state has shapes {logits.shape} and {filled.shape}, expected "
                f"({self.num_samples}, {self.num_classes}) and ({self.num_samples},)"
            )
        if not np.isfinite(logits[filled]).all():
            raise ValueError("cached logits hold NaN or inf")
        return logits, filled

    def load_state_dict(self, state: dict[str, NDArray[np.generic]]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache."""
        logits, filled = self.check_state_dict(state)
        self._logits = torch.from_numpy(logits.copy())
        self._filled = torch.from_numpy(filled.copy())
