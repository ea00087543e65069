"""Cache of the clients' fused teacher on the unlabelled transfer part (``strategy.unlabelled_cache``).

Each round the server pays for the clients' logits on a subset of the unlabelled part and fuses them into a
teacher. Without a cache it distils that teacher for one round and throws it away: with 10,000 unlabelled samples
and 1,000 asked per round, it sees each teacher once. The cache keeps, per unlabelled sample, the newest fused
teacher logits and the round they were computed in, so the server can distil this round's teacher together with
those of the last few rounds at no extra uplink. A sample answered again takes the new teacher, or, when the new
one is not kept (a confidence gate), none: the clients' newer answer no longer backs the old one.

The cache also remembers which clients answered each cached teacher. A client found lying later (the canaries'
screen pools its evidence over rounds, so a client that poisons a small share may pass it for a few rounds) must not
keep teaching through what it taught before it was caught: :meth:`TeacherCache.forget_clients` drops every cached
teacher it had a part in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from fl_kd.kd.cache import KnowledgeCache

NEVER = -1
"""Round stamp of a sample that has no cached teacher."""


class TeacherCache:
    """Newest teacher logits per unlabelled sample (a :class:`~fl_kd.kd.cache.KnowledgeCache` over the unlabelled
    part, which checks positions, shapes and finiteness), the round ``(M,)`` they were computed in and, per client,
    the ``(M,)`` mask of the cached teachers its answers went into.

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
        self.contributors: dict[int, Tensor] = {}

    @property
    def num_filled(self) -> int:
        """How many samples hold a teacher (of any round)."""
        return self.knowledge.num_filled

    def update(
        self, indices: Tensor, logits: Tensor, round: int, contributors: Mapping[int, Tensor] | None = None
    ) -> None:
        """Store ``round``'s teacher ``logits`` ``(n, C)`` at unlabelled ``indices`` ``(n,)``, replacing older ones.

        ``contributors`` maps each client id to an ``(n,)`` mask of the new teachers its answers went into; the
        older teachers' contributors are dropped with them.
        """
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        index = indices.reshape(-1).long().cpu()
        masks = {int(client): torch.as_tensor(mask).reshape(-1).cpu() for client, mask in (contributors or {}).items()}
        for client, mask in masks.items():
            if mask.dtype != torch.bool or mask.numel() != index.numel():
                raise ValueError(
                    f"contributor mask of client {client} must be bool of shape ({index.numel()},), "
                    f"got {mask.dtype} of shape {tuple(mask.shape)}"
                )
        self.knowledge.update(indices, logits)  # refuses bad positions, shapes and non-finite logits
        self.rounds[index] = round
        self._clear_contributors(index)
        for client, mask in masks.items():
            held = self.contributors.setdefault(client, torch.zeros(self.rounds.numel(), dtype=torch.bool))
            held[index[mask]] = True

    def forget(self, indices: Tensor) -> None:
        """Drop the teachers at unlabelled ``indices`` ``(n,)``: answered again, the clients no longer back them."""
        self.knowledge.forget(indices)
        index = indices.reshape(-1).long().cpu()
        self.rounds[index] = NEVER
        self._clear_contributors(index)

    def forget_clients(self, clients: Iterable[int]) -> int:
        """Drop every cached teacher any of ``clients`` answered; how many were dropped."""
        held = [self.contributors[c] for c in clients if c in self.contributors]
        if not held:
            return 0
        index = torch.nonzero(torch.stack(held).any(dim=0)).reshape(-1)
        self.forget(index)
        return int(index.numel())

    def _clear_contributors(self, index: Tensor) -> None:
        for held in self.contributors.values():
            held[index] = False

    def select(self, round: int, horizon: int) -> tuple[Tensor, Tensor]:
        """Sorted indices ``(n,)`` and logits ``(n, C)`` of the teachers computed in rounds ``round - horizon`` to
        ``round``: this round's and those of the ``horizon`` rounds before it."""
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        recent = (self.rounds != NEVER) & (self.rounds >= round - horizon) & (self.rounds <= round)
        index = torch.nonzero(recent).reshape(-1)
        return index, self.knowledge.get(index)

    def state_dict(self) -> dict[str, Any]:
        """The logits' cache state and copies of the round stamps and the contributor masks."""
        return {
            "knowledge": self.knowledge.state_dict(),
            "rounds": self.rounds.clone(),
            "contributors": {client: mask.clone() for client, mask in self.contributors.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache, the stamps the filled samples and the
        contributor masks lie within them."""
        filled = torch.from_numpy(self.knowledge.check_state_dict(state["knowledge"])[1])
        rounds = torch.as_tensor(state["rounds"], dtype=torch.int64)
        if rounds.shape != self.rounds.shape or not torch.equal(rounds != NEVER, filled):
            raise ValueError(
                f"teacher cache round stamps have shape {tuple(rounds.shape)}, expected {tuple(self.rounds.shape)}, "
                "and must be set exactly where a teacher is cached"
            )
        contributors = {int(client): torch.as_tensor(mask) for client, mask in state["contributors"].items()}
        for client, mask in contributors.items():
            if mask.dtype != torch.bool or mask.shape != filled.shape or bool((mask & ~filled).any()):
                raise ValueError(
                    f"teacher cache contributor mask of client {client} must be bool of shape {tuple(filled.shape)}, "
                    "set only where a teacher is cached"
                )
        self.knowledge.load_state_dict(state["knowledge"])
        self.rounds = rounds.clone()
        self.contributors = {client: mask.clone() for client, mask in contributors.items()}
