"""Cache of the clients' fused teacher on the unlabelled transfer part (``strategy.unlabelled_cache``).

Each round the server pays for the clients' logits on a subset of the unlabelled part and fuses them into a
teacher. Without a cache it distils that teacher for one round and throws it away: with 10,000 unlabelled samples
and 1,000 asked per round, it sees each teacher once. The cache keeps, per unlabelled sample, the newest fused
teacher logits and the round they were computed in, so the server can distil this round's teacher together with
those of the last few rounds at no extra uplink. A sample answered again takes the new teacher, or, when the new
one is not kept (a confidence gate), none: the clients' newer answer no longer backs the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fl_kd.kd.cache import KnowledgeCache

NEVER = -1
"""Round stamp of a sample that has no cached teacher."""


class TeacherCache:
    """Newest teacher logits per unlabelled sample (a :class:`~fl_kd.kd.cache.KnowledgeCache` over the unlabelled
    part, which checks positions, shapes and finiteness) and the round ``(M,)`` they were computed in.

    Parameters
    ----------
    num_samples : int
        Size M of the unlabelled part.
    num_classes : int
        Number of classes C.
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        self.knowledge = KnowledgeCache(num_samples, num_classes)
        self.rounds = torch.full((num_samples,), NEVER, dtype=torch.int64)

    @property
    def num_filled(self) -> int:
        """How many samples hold a teacher (of any round)."""
        return self.knowledge.num_filled

    def update(self, indices: Tensor, logits: Tensor, round: int) -> None:
        """Store ``round``'s teacher ``logits`` ``(n, C)`` at unlabelled ``indices`` ``(n,)``, replacing older ones."""
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        self.knowledge.update(indices, logits)  # refuses bad positions, shapes and non-finite logits
        self.rounds[indices.reshape(-1).long().cpu()] = round

    def forget(self, indices: Tensor) -> None:
        """Drop the teachers at unlabelled ``indices`` ``(n,)``: answered again, the clients no longer back them."""
        self.knowledge.forget(indices)
        self.rounds[indices.reshape(-1).long().cpu()] = NEVER

    def select(self, round: int, horizon: int) -> tuple[Tensor, Tensor]:
        """Sorted indices ``(n,)`` and logits ``(n, C)`` of the teachers computed in rounds ``round - horizon`` to
        ``round``: this round's and those of the ``horizon`` rounds before it."""
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        recent = (self.rounds != NEVER) & (self.rounds >= round - horizon) & (self.rounds <= round)
        index = torch.nonzero(recent).reshape(-1)
        return index, self.knowledge.get(index)

    def state_dict(self) -> dict[str, Any]:
        """The logits' cache state and a copy of the round stamps."""
        return {"knowledge": self.knowledge.state_dict(), "rounds": self.rounds.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache and the stamps the filled samples."""
        filled = torch.from_numpy(self.knowledge.check_state_dict(state["knowledge"])[1])
        rounds = torch.as_tensor(state["rounds"], dtype=torch.int64)
        if rounds.shape != self.rounds.shape or not torch.equal(rounds != NEVER, filled):
            raise ValueError(
                f"teacher cache round stamps have shape {tuple(rounds.shape)}, expected {tuple(self.rounds.shape)}, "
                "and must be set exactly where a teacher is cached"
            )
        self.knowledge.load_state_dict(state["knowledge"])
        self.rounds = rounds.clone()
