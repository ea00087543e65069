"""Cache of the clients' fused teacher on the unlabelled transfer part (``strategy.unlabelled_cache``).

Each round the server pays for the clients' logits on a subset of the unlabelled part and fuses them into a
teacher. Without a cache it distils that teacher for one round and throws it away: with 10,000 unlabelled samples
and 1,000 asked per round, it sees each teacher once. The cache keeps, per unlabelled sample, the newest fused
teacher logits and the round they were computed in, so the server can distil this round's teacher together with
those of the last few rounds at no extra uplink. A sample answered again takes the new teacher.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

NEVER = -1
"""Round stamp of a sample that has no cached teacher."""


class TeacherCache:
    """Newest teacher logits ``(M, C)`` per unlabelled sample and the round ``(M,)`` they were computed in.

    Parameters
    ----------
    num_samples : int
        Size M of the unlabelled part.
    num_classes : int
        Number of classes C.
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        if num_samples < 0 or num_classes < 1:
            raise ValueError(f"need num_samples >= 0 and num_classes >= 1, got {num_samples}, {num_classes}")
        self.logits = torch.zeros(num_samples, num_classes, dtype=torch.float32)
        self.rounds = torch.full((num_samples,), NEVER, dtype=torch.int64)

    @property
    def num_filled(self) -> int:
        """How many samples hold a teacher (of any round)."""
        return int((self.rounds != NEVER).sum())

    def update(self, indices: Tensor, logits: Tensor, round: int) -> None:
        """Store ``round``'s teacher ``logits`` ``(n, C)`` at unlabelled ``indices`` ``(n,)``, replacing older ones."""
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        index = indices.reshape(-1).long().cpu()
        if logits.shape != (index.numel(), self.logits.shape[1]):
            raise ValueError(f"logits must be (n, C) = ({index.numel()}, {self.logits.shape[1]}), got {logits.shape}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.rounds.numel()):
            raise ValueError(f"indices must lie in [0, {self.rounds.numel()})")
        values = logits.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("refusing to cache non-finite teacher logits")
        self.logits[index] = values
        self.rounds[index] = round

    def select(self, round: int, horizon: int) -> tuple[Tensor, Tensor]:
        """Sorted indices ``(n,)`` and logits ``(n, C)`` of the teachers computed in rounds ``round - horizon`` to
        ``round``: this round's and those of the ``horizon`` rounds before it."""
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        recent = (self.rounds != NEVER) & (self.rounds >= round - horizon) & (self.rounds <= round)
        index = torch.nonzero(recent).reshape(-1)
        return index, self.logits[index].clone()

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the logits and round stamps."""
        return {"logits": self.logits.clone(), "rounds": self.rounds.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache."""
        logits = torch.as_tensor(state["logits"], dtype=torch.float32)
        rounds = torch.as_tensor(state["rounds"], dtype=torch.int64)
        if logits.shape != self.logits.shape or rounds.shape != self.rounds.shape:
            raise ValueError(
                f"teacher cache state has shapes {tuple(logits.shape)} and {tuple(rounds.shape)}, expected "
                f"{tuple(self.logits.shape)} and {tuple(self.rounds.shape)}"
            )
        if not bool(torch.isfinite(logits[rounds != NEVER]).all()):
            raise ValueError("cached teacher logits hold NaN or inf")
        self.logits = logits.clone()
        self.rounds = rounds.clone()
