"""The server's side of VFL messages: one exchange with a set of nodes, and the three exchanges of a mini-batch.

:class:`Messenger` sends one message per node over a Flower ``Grid`` and says, per node, what came back or why
nothing usable did. :class:`BatchExchange` runs split training's per-batch protocol on top of it (feature parties
embed, the label party steps, feature parties apply their gradients) and screens every reply: a batch with a
missing, mis-shaped or non-finite embedding, or that the label party rejects, is skipped; a gradient a feature
party refuses is recorded. Names and keys come from :mod:`fl_kd.vfl.protocol`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.protocol import ProtocolError, array_of, scalar_of
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.trainer import TrainingHistory


@dataclass
class Outcome:
    """One node's answer to one exchange: its content, or why there is none."""

    content: RecordDict | None
    problem: str | None = None


@dataclass
class Party:
    """A node of the run: its role, its party id (feature parties) and its Flower node id."""

    role: str
    party_id: int
    node_id: int


class Messenger:
    """Sends one message per node and collects each node's reply, counting the exchanges.

    Parameters
    ----------
    grid : Grid
        The federation.
    timeout : float
        Seconds to wait for the replies of one exchange, unless an exchange asks for longer.
    """

    def __init__(self, grid: Grid, timeout: float) -> None:
        self.grid = grid
        self.timeout = timeout
        self.exchanges = 0

    def exchange(
        self, message_type: str, contents: Mapping[int, RecordDict], timeout: float | None = None
    ) -> dict[int, Outcome]:
        """Send ``contents[node]`` to each node; what each node answered (or why it did not)."""
        self.exchanges += 1
        messages = [Message(content, dst_node_id=node, message_type=message_type) for node, content in contents.items()]
        outcomes: dict[int, Outcome] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout or self.timeout):
            node_id = reply.metadata.src_node_id
            if node_id not in contents:
                log(WARNING, "%s: ignored a reply from node %s, which was not asked", message_type, node_id)
            elif node_id in outcomes:
                log(WARNING, "%s: ignored a second reply from node %s", message_type, node_id)
            elif reply.has_error():
                outcomes[node_id] = Outcome(None, f"error reply ({reply.error.reason})")
            else:
                outcomes[node_id] = Outcome(reply.content)
        for node_id in contents:
            outcomes.setdefault(node_id, Outcome(None, "no reply"))
        return outcomes

    def require(
        self, message_type: str, contents: Mapping[int, RecordDict], what: str, timeout: float | None = None
    ) -> dict[int, RecordDict]:
        """:meth:`exchange` for a step the run cannot skip: all contents, else ``RuntimeError`` naming who failed."""
        outcomes = self.exchange(message_type, contents, timeout)
        problems = {node: outcome.problem for node, outcome in outcomes.items() if outcome.content is None}
        if problems:
            raise RuntimeError(f"{what} failed: " + "; ".join(f"node {n}: {p}" for n, p in sorted(problems.items())))
        return {node: outcome.content for node, outcome in outcomes.items() if outcome.content is not None}


def request(arrays: Mapping[str, NDArray[Any]], **config: Any) -> RecordDict:
    """A message's content: ``arrays`` in the ``arrays`` record and scalars in the ``config`` record."""
    content = RecordDict({vp.ARRAYS: ArrayRecord({key: Array(array) for key, array in arrays.items()})})
    if config:
        content[vp.CONFIG] = ConfigRecord(config)
    return content


def embedding_problem(content: RecordDict | None, key: str, shape: tuple[int, int]) -> tuple[NDArray[Any] | None, str]:
    """The embedding ``key`` of a reply and ``""``, or ``None`` and why it cannot be used.

    Usable means a finite float32 array of ``shape``.
    """
    try:
        array = None if content is None else array_of(content, vp.ARRAYS, key)
    except ProtocolError as err:
        return None, f"embedding does not decode: {err}"
    if array is None:
        return None, "sent no embedding"
    if array.dtype != np.float32:
        return None, f"embedding has dtype {array.dtype}, expected float32"
    if array.shape != shape:
        return None, f"embedding has shape {array.shape}, expected {shape}"
    if not np.isfinite(array).all():
        return None, "embedding contains NaN or inf"
    return array, ""


class BatchExchange:
    """Split training's three exchanges for the mini-batches of one round of messages.

    Parameters
    ----------
    messenger : Messenger
    features : Sequence[Party]
        The feature parties, in party-id order.
    label : Party
        The label party.
    embedding_dims : Sequence[int]
        The embedding size of each feature party, as the label party expects it.
    history : TrainingHistory
        Where skipped batches and refused gradients are recorded.
    """

    def __init__(
        self,
        messenger: Messenger,
        features: Sequence[Party],
        label: Party,
        embedding_dims: Sequence[int],
        history: TrainingHistory,
    ) -> None:
        self.messenger = messenger
        self.features = list(features)
        self.label = label
        self.embedding_dims = list(embedding_dims)
        self.history = history

    def train(self, epoch: int, chunk: Mapping[int, Tensor]) -> list[float]:
        """Train on the batches ``{index: ids (B,)}``; returns the losses of the batches stepped on, in order."""
        ids = {b: chunk[b].numpy().astype(np.int64) for b in sorted(chunk)}
        embeddings = self._embed(epoch, ids)
        if not embeddings:
            return []
        losses, reply = self._step(epoch, ids, embeddings)
        if losses:
            self._apply(epoch, ids, list(losses), reply)
        return list(losses.values())

    def _embed(self, epoch: int, ids: Mapping[int, NDArray[np.int64]]) -> dict[int, list[NDArray[Any]]]:
        """Every feature party's embedding of each batch; batches with a missing or unusable one are skipped."""
        arrays = {vp.ids_key(b): batch for b, batch in ids.items()}
        contents = {p.node_id: request(arrays, epoch=epoch, batches=list(ids)) for p in self.features}
        replies = self.messenger.exchange(vp.EMBED, contents)
        accepted: dict[int, list[NDArray[Any]]] = {}
        for b, batch in ids.items():
            embeddings = []
            for party, dim in zip(self.features, self.embedding_dims, strict=True):
                outcome = replies[party.node_id]
                array, problem = embedding_problem(outcome.content, vp.embedding_key(b), (len(batch), dim))
                if array is None:
                    self.history.skip(epoch, b, f"feature party {party.party_id}: {outcome.problem or problem}")
                    break
                embeddings.append(array)
            else:
                accepted[b] = embeddings
        return accepted

    def _step(
        self, epoch: int, ids: Mapping[int, NDArray[np.int64]], embeddings: Mapping[int, Sequence[NDArray[Any]]]
    ) -> tuple[dict[int, float], RecordDict]:
        """The label party's training steps; returns the loss of each batch it stepped on, and its reply."""
        arrays: dict[str, NDArray[Any]] = {}
        for b, per_party in embeddings.items():
            arrays[vp.ids_key(b)] = ids[b]
            for party, embedding in zip(self.features, per_party, strict=True):
                arrays[vp.embedding_key(b, party.party_id)] = embedding
        content = request(arrays, epoch=epoch, batches=list(embeddings))
        outcome = self.messenger.exchange(vp.LOSS_AND_GRADIENTS, {self.label.node_id: content})[self.label.node_id]
        if outcome.content is None:
            for b in embeddings:
                self.history.skip(epoch, b, f"label party: {outcome.problem}")
            return {}, RecordDict()
        losses = {}
        for b in embeddings:
            reason = scalar_of(outcome.content, vp.CONFIG, vp.rejected_key(b))
            loss = scalar_of(outcome.content, vp.METRICS, vp.loss_key(b))
            if reason is not None or isinstance(loss, bool) or not isinstance(loss, int | float):
                self.history.skip(epoch, b, f"label party rejected the embeddings: {reason or 'no loss reported'}")
            else:
                losses[b] = float(loss)
        return losses, outcome.content

    def _apply(self, epoch: int, ids: Mapping[int, NDArray[np.int64]], stepped: list[int], reply: RecordDict) -> None:
        """Send each feature party its gradients of the stepped batches; record every one it refuses."""
        contents = {}
        for party in self.features:
            arrays: dict[str, NDArray[Any]] = {}
            for b in stepped:
                arrays[vp.ids_key(b)] = ids[b]
                try:
                    gradient = array_of(reply, vp.ARRAYS, vp.gradient_key(b, party.party_id))
                except ProtocolError:
                    gradient = None
                if gradient is not None:  # a missing gradient is the feature party's to refuse, and to report
                    arrays[vp.gradient_key(b)] = gradient
            contents[party.node_id] = request(arrays, epoch=epoch, batches=stepped)
        replies = self.messenger.exchange(vp.APPLY_GRADIENTS, contents)
        for party in self.features:
            outcome = replies[party.node_id]
            for b in stepped:
                if outcome.content is None:
                    reason = outcome.problem
                else:
                    reason = scalar_of(outcome.content, vp.CONFIG, vp.rejected_key(b))
                if reason is not None:
                    self.history.fail_update(epoch, b, party.party_id, str(reason))
