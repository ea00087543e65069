"""Cache of the clients' fused teacher on the unlabelled transfer part (``strategy.unlabelled_cache``).

Each round the server pays for the clients' logits on a subset of the unlabelled part and fuses them into a
teacher. Without a cache it distils that teacher for one round and throws it away: with 10,000 unlabelled samples
and 1,000 asked per round, it sees each teacher once. The cache keeps, per unlabelled sample, the newest fused
teacher logits and the round they were computed in, so the server can distil this round's teacher together with
those of the last few rounds at no extra uplink. A sample answered again takes the new teacher, or, when the new
one is not kept (a confidence gate), none: the clients' newer answer no longer backs the old one.

A client found lying later must not keep teaching through what it taught before it was caught (the canaries'
screen pools its evidence over rounds, so a client that poisons a small share may pass it for a few rounds). So the
cache can also keep each round's answers with what its fusion was fitted on (:data:`AnswerBlock`), and
:meth:`TeacherCache.refuse_without` fuses the cached teachers again without the clients caught. Dropping every
teacher such a client had a part in would drop the whole cache when every client answers every sample: the honest
majority's knowledge would go with the lie. The fusion must be fitted again, too: leaving a client out of a combiner
fitted with it breaks the balance between correlated clients' weights (on Fashion-MNIST it cost the teacher 6 points).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from fl_kd.kd.cache import KnowledgeCache

NEVER = -1
"""Round stamp of a sample that has no cached teacher."""

Refuse = Callable[[Mapping[str, Tensor], Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(params, members (K,), answers (K, n, C), available (K, n)) -> (teacher logits (n, C), kept (n,))``: a round's
fusion of the clients still ``members``, fitted again on ``params`` where it is fitted."""

AnswerBlock = dict[str, Tensor]
"""One round's answers behind its cached teachers: ``indices`` ``(n,)``, ``clients`` ``(K,)`` ids, ``answers``
``(K, n, C)``, ``available`` ``(K, n)`` bool, and what the fusion needs under any other key (plain tensors, so a
checkpoint holds them). The cache adds ``members`` ``(K,)``: the clients not caught since."""

_BLOCK_KEYS = ("indices", "clients", "answers", "available", "members")


class TeacherCache:
    """Newest teacher logits per unlabelled sample (a :class:`~fl_kd.kd.cache.KnowledgeCache` over the unlabelled
    part, which checks positions, shapes and finiteness), the round ``(M,)`` they were computed in and, when given,
    each round's answers behind them (round -> :data:`AnswerBlock`, dropped once they age out of every horizon).

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
        self.blocks: dict[int, AnswerBlock] = {}

    @property
    def num_filled(self) -> int:
        """How many samples hold a teacher (of any round)."""
        return self.knowledge.num_filled

    def update(self, indices: Tensor, logits: Tensor, round: int, block: AnswerBlock | None = None) -> None:
        """Store ``round``'s teacher ``logits`` ``(n, C)`` at unlabelled ``indices`` ``(n,)``, replacing older ones;
        ``block``: the answers and fusion parameters they were fused from (its ``indices`` are ``indices``)."""
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")
        if block is not None:
            if "clients" in block:  # every client a member until caught
                block = {"members": torch.ones(block["clients"].numel(), dtype=torch.bool), **block}
            _check_block(block, indices.reshape(-1).long().cpu(), self.knowledge.num_classes)
        self.knowledge.update(indices, logits)  # refuses bad positions, shapes and non-finite logits
        self.rounds[indices.reshape(-1).long().cpu()] = round
        if block is not None:
            self.blocks[round] = block

    def forget(self, indices: Tensor) -> None:
        """Drop the teachers at unlabelled ``indices`` ``(n,)``: answered again, the clients no longer back them."""
        self.knowledge.forget(indices)
        self.rounds[indices.reshape(-1).long().cpu()] = NEVER

    def refuse_without(self, clients: Iterable[int], refuse: Refuse) -> tuple[int, int]:
        """Fuse every cached teacher any of ``clients`` answered again without them (each from its round's answers,
        through ``refuse``), keeping its round; drop those ``refuse`` does not keep. Returns how many teachers were
        fused again and how many of them were dropped."""
        caught = torch.tensor(sorted(set(clients)), dtype=torch.int64)
        refused = dropped = 0
        for round, block in self.blocks.items():
            rows = torch.isin(block["clients"], caught) & block["members"]
            if not bool(rows.any()):
                continue
            block["members"] = block["members"] & ~rows  # for good: a later call finds nothing of them here
            live = self.rounds[block["indices"]] == round  # not answered again since
            affected = live & block["available"][rows].any(dim=0)
            if not bool(affected.any()):
                continue
            params = {k: v for k, v in block.items() if k not in _BLOCK_KEYS}
            answers, available = block["answers"][:, affected], block["available"][:, affected]
            logits, kept = refuse(params, block["members"], answers, available)
            index = block["indices"][affected]
            if bool(kept.any()):
                self.knowledge.update(index[kept], logits[kept])
            self.forget(index[~kept])
            refused += int(index.numel())
            dropped += int((~kept).sum())
        return refused, dropped

    def select(self, round: int, horizon: int) -> tuple[Tensor, Tensor]:
        """Sorted indices ``(n,)`` and logits ``(n, C)`` of the teachers computed in rounds ``round - horizon`` to
        ``round``: this round's and those of the ``horizon`` rounds before it."""
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        for old in [r for r in self.blocks if r < round - horizon]:
            del self.blocks[old]  # its teachers are out of the horizon: never distilled nor fused again
        recent = (self.rounds != NEVER) & (self.rounds >= round - horizon) & (self.rounds <= round)
        index = torch.nonzero(recent).reshape(-1)
        return index, self.knowledge.get(index)

    def state_dict(self) -> dict[str, Any]:
        """The logits' cache state and copies of the round stamps and the answer blocks."""
        return {
            "knowledge": self.knowledge.state_dict(),
            "rounds": self.rounds.clone(),
            "blocks": {round: {k: v.clone() for k, v in block.items()} for round, block in self.blocks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache, the stamps the filled samples and each
        answer block its own indices."""
        filled = torch.from_numpy(self.knowledge.check_state_dict(state["knowledge"])[1])
        rounds = torch.as_tensor(state["rounds"], dtype=torch.int64)
        if rounds.shape != self.rounds.shape or not torch.equal(rounds != NEVER, filled):
            raise ValueError(
                f"teacher cache round stamps have shape {tuple(rounds.shape)}, expected {tuple(self.rounds.shape)}, "
                "and must be set exactly where a teacher is cached"
            )
        saved = state.get("blocks", {})  # none in a state saved before the cache kept answers
        blocks = {int(r): {k: torch.as_tensor(v) for k, v in block.items()} for r, block in saved.items()}
        for block in blocks.values():
            index = torch.as_tensor(block.get("indices", torch.zeros(0, dtype=torch.int64)))  # missing: said below
            if index.dtype != torch.int64 or (index.numel() and (index.min() < 0 or index.max() >= filled.numel())):
                raise ValueError(f"teacher cache answer block indices must be int64 in [0, {filled.numel()})")
            _check_block(block, index, self.knowledge.num_classes)
        self.knowledge.load_state_dict(state["knowledge"])
        self.rounds = rounds.clone()
        self.blocks = {r: {k: v.clone() for k, v in block.items()} for r, block in blocks.items()}


def _check_block(block: Mapping[str, Tensor], indices: Tensor, num_classes: int) -> None:
    """Refuse an answer block whose parts do not fit together (``ValueError`` saying which)."""
    missing = [key for key in _BLOCK_KEYS if key not in block]
    if missing:
        raise ValueError(f"answer block lacks {missing}")
    clients, answers, available, members = (block[key] for key in _BLOCK_KEYS[1:])
    k, n = int(clients.numel()), int(indices.numel())
    if (
        not torch.equal(block["indices"].reshape(-1).long().cpu(), indices)
        or clients.dtype != torch.int64
        or answers.shape != (k, n, num_classes)
        or available.dtype != torch.bool
        or available.shape != (k, n)
        or members.dtype != torch.bool
        or members.shape != (k,)
    ):
        raise ValueError(
            f"answer block must hold indices equal to the teachers', int64 clients (K,), answers (K, {n}, "
            f"{num_classes}), bool available (K, {n}) and bool members (K,); got clients {clients.dtype} "
            f"{tuple(clients.shape)}, answers {tuple(answers.shape)}, available {available.dtype} "
            f"{tuple(available.shape)}, members {members.dtype} {tuple(members.shape)}"
        )
