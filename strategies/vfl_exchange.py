"""The server's side of VFL messages: one exchange with a set of nodes, and the exchanges of a round of mini-batches.

:class:`Messenger` sends one message per node over a Flower ``Grid`` and says, per node, what came back or why
nothing usable did. :class:`BatchExchange` runs split training's per-batch protocol on top of it (feature parties
embed, the label party steps, feature parties apply their gradients, the last step riding with the next round's
embedding request) and screens every reply: a batch with a
missing, mis-shaped, non-float32, non-finite or out-of-bound embedding, or that the label party rejects, is skipped;
a gradient that fails the same checks is not forwarded, and it, or one a feature party refuses, is recorded. Names
and keys come from :mod:`fl_kd.vfl.protocol`.
"""

from __future__ import annotations

from collections import Counter
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

from fl_kd.protocol import (
    MAX_RECORD_ARRAYS,
    MAX_RECORD_BYTES,
    ProtocolError,
    array_of,
    declared_nbytes,
    number_of,
    party_text,
    record,
    scalar_of,
)
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.config import DEFAULT_MAX_NORM
from fl_kd.vfl.trainer import TrainingHistory

#: The largest loss a label party can compute: its cross-entropy is of float32 logits.
FLOAT32_MAX = float(np.finfo(np.float32).max)


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


#: Exchanges in a row a node may leave without any reply before the run stops (an error reply fails at once and
#: skips its batch; a node that has gone silent would make the run wait out the timeout on every batch).
MAX_SILENT_EXCHANGES = 3


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
        #: Replies refused before any party could use them, by reason.
        self.rejected: Counter[str] = Counter()
        #: Exchanges in a row that each node has let pass without any reply.
        self.silent: Counter[int] = Counter()

    def exchange(
        self, message_type: str, contents: Mapping[int, RecordDict], timeout: float | None = None
    ) -> dict[int, Outcome]:
        """Send ``contents[node]`` to each node; what each node answered (or why it did not).

        A message lives as long as the exchange waits (its TTL), so one its node has not taken by then expires
        instead of being handled hours later, after the server counted it as unanswered.
        """
        self.exchanges += 1
        wait = timeout or self.timeout
        messages = [
            Message(content, dst_node_id=node, message_type=message_type, ttl=wait)
            for node, content in contents.items()
        ]
        outcomes: dict[int, Outcome] = {}
        sent = {message.metadata.dst_node_id: message for message in messages}
        for reply in self.grid.send_and_receive(messages, timeout=wait):
            node_id = reply.metadata.src_node_id
            if node_id not in contents:
                log(WARNING, "%s: ignored a reply from node %s, which was not asked", message_type, node_id)
                self.rejected["reply from a node that was not asked"] += 1
            elif reply.metadata.reply_to_message_id != sent[node_id].metadata.message_id:
                log(WARNING, "%s: ignored a reply from node %s to a message it was not sent now", message_type, node_id)
                self.rejected["reply to a message the node was not sent now"] += 1
            elif node_id in outcomes:
                # Two replies to one message: neither can be trusted, so the node counts as not answering.
                log(WARNING, "%s: node %s replied more than once; all its replies are dropped", message_type, node_id)
                outcomes[node_id] = Outcome(None, "more than one reply")
                self.rejected["more than one reply"] += 1
            elif reply.has_error():
                outcomes[node_id] = Outcome(None, f"error reply ({party_text(reply.error.reason)})")
                self.rejected["error reply"] += 1
            elif (problem := _record_problem(reply.content)) is not None:
                log(WARNING, "%s: refused the reply of node %s: %s", message_type, node_id, problem)
                outcomes[node_id] = Outcome(None, problem)
                self.rejected["arrays record beyond the protocol"] += 1
            else:
                outcomes[node_id] = Outcome(reply.content)
        for node_id in contents:
            if node_id in outcomes:
                self.silent[node_id] = 0
                continue
            outcomes[node_id] = Outcome(None, "no reply")
            self.silent[node_id] += 1
            if self.silent[node_id] >= MAX_SILENT_EXCHANGES:
                # Every batch needs every party: waiting out the timeout on each would only skip them all.
                raise RuntimeError(
                    f"node {node_id} has sent no reply to {self.silent[node_id]} exchanges in a row, each waited "
                    f"for {timeout or self.timeout:g} s ({message_type}): it is gone, so the run stops"
                )
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


def _record_problem(content: RecordDict) -> str | None:
    """Why a reply's arrays record is beyond the protocol as a whole, or None: more arrays than
    :data:`~fl_kd.protocol.MAX_RECORD_ARRAYS`, or valid headers declaring more than
    :data:`~fl_kd.protocol.MAX_RECORD_BYTES` in all. Read before any array decodes; an array whose own header is
    bad is refused where it is read, so that it costs its batch only."""
    found = record(content, vp.ARRAYS)
    if len(found) > MAX_RECORD_ARRAYS:
        return f"arrays record beyond the protocol: {len(found)} arrays, more than {MAX_RECORD_ARRAYS}"
    total = 0
    for array in found.values():
        try:
            total += declared_nbytes(array)
        except ProtocolError:
            continue
    if total > MAX_RECORD_BYTES:
        return f"arrays record beyond the protocol: {total} declared bytes, more than {MAX_RECORD_BYTES}"
    return None


def request(arrays: Mapping[str, NDArray[Any]], **config: Any) -> RecordDict:
    """A message's content: ``arrays`` in the ``arrays`` record and scalars in the ``config`` record."""
    content = RecordDict({vp.ARRAYS: ArrayRecord({key: Array(array) for key, array in arrays.items()})})
    if config:
        content[vp.CONFIG] = ConfigRecord(config)
    return content


def embedding_problem(
    content: RecordDict | None, key: str, shape: tuple[int, int], max_norm: float = DEFAULT_MAX_NORM, what: str = ""
) -> tuple[NDArray[Any] | None, str]:
    """The embedding (or gradient: ``what``) ``key`` of a reply and ``""``, or ``None`` and why it cannot be used.

    Usable means a finite float32 array of ``shape`` whose rows have L2 norms of at most ``max_norm``.
    """
    what = what or "embedding"
    try:
        array = None if content is None else array_of(content, vp.ARRAYS, key)
    except ProtocolError as err:
        return None, f"{what} does not decode: {party_text(err)}"
    if array is None:
        return None, f"sent no {what}"
    problem = vp.float_block_problem(array, shape[0], max_norm, shape[1])
    if problem is not None:
        return None, f"{what} has {problem}"
    return array, ""


@dataclass
class DeferredGradients:
    """Screened gradients of one round, to be sent with the feature parties' next embedding request."""

    epoch: int
    arrays: dict[int, dict[str, NDArray[Any]]]
    """Per feature node: ``ids.<b>`` and ``grad.<b>`` of each batch it is sent."""
    sent: dict[int, list[int]]
    """Per feature node: the batches whose gradients it is sent, in order."""


class BatchExchange:
    """Split training's exchanges for the mini-batches of one round of messages.

    Plain split training asks the feature parties to embed, the label party to step and the feature parties to apply
    their gradients: three exchanges. The third is deferred and travels with the next round's embedding request
    (``train.apply_and_embed``: apply, then embed, the same order), so a round costs two exchanges and trains exactly
    as before; :meth:`flush` sends what is left at the end of an epoch.

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
    max_norm : float (default: 1e4)
        Bound on the L2 norm of one sample's embedding or gradient (``training.max_norm``).
    """

    def __init__(
        self,
        messenger: Messenger,
        features: Sequence[Party],
        label: Party,
        embedding_dims: Sequence[int],
        history: TrainingHistory,
        max_norm: float = DEFAULT_MAX_NORM,
    ) -> None:
        self.messenger = messenger
        self.features = list(features)
        self.label = label
        self.embedding_dims = list(embedding_dims)
        self.history = history
        self.max_norm = max_norm
        self._deferred: DeferredGradients | None = None

    def train(self, epoch: int, chunk: Mapping[int, Tensor]) -> list[float]:
        """Train on the batches ``{index: ids (B,)}``; returns the losses of the batches stepped on, in order.

        The gradients of these batches reach the feature parties with the next call's embedding request or at
        :meth:`flush`.
        """
        ids = {b: chunk[b].numpy().astype(np.int64) for b in sorted(chunk)}
        embeddings = self._embed(epoch, ids)
        if not embeddings:
            return []
        losses, reply = self._step(epoch, ids, embeddings)
        if losses:
            self._deferred = self._screen(epoch, ids, list(losses), reply)
        return list(losses.values())

    def flush(self) -> None:
        """Send the feature parties the gradients still deferred (end of an epoch, before any evaluation)."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None and deferred.arrays:
            self._settle(deferred, self.messenger.exchange(vp.APPLY_GRADIENTS, self._apply_contents(deferred)))

    def _embed(self, epoch: int, ids: Mapping[int, NDArray[np.int64]]) -> dict[int, list[NDArray[Any]]]:
        """Every feature party's embedding of each batch; batches with a missing or unusable one are skipped.

        Deferred gradients of the same epoch travel with the request and are applied first.
        """
        deferred = self._deferred
        if deferred is not None and (deferred.epoch != epoch or any(set(b) & set(ids) for b in deferred.sent.values())):
            self.flush()  # keys would clash: batch indices are unique within an epoch only
            deferred = None
        self._deferred = None
        arrays = {vp.ids_key(b): batch for b, batch in ids.items()}
        contents = {}
        for party in self.features:
            applied = [] if deferred is None else deferred.sent.get(party.node_id, [])
            extra = {vp.APPLY: applied} if applied else {}
            both = {**arrays, **(deferred.arrays.get(party.node_id, {}) if deferred is not None else {})}
            contents[party.node_id] = request(both, epoch=epoch, batches=list(ids), **extra)
        replies = self.messenger.exchange(vp.EMBED if deferred is None else vp.APPLY_AND_EMBED, contents)
        if deferred is not None:
            self._settle(deferred, replies)
        accepted: dict[int, list[NDArray[Any]]] = {}
        for b, batch in ids.items():
            embeddings = []
            for party, dim in zip(self.features, self.embedding_dims, strict=True):
                outcome = replies[party.node_id]
                shape = (len(batch), dim)
                array, problem = embedding_problem(outcome.content, vp.embedding_key(b), shape, self.max_norm)
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
            reason = None if reason is None else party_text(reason)
            loss = number_of(outcome.content, vp.METRICS, vp.loss_key(b))
            if reason is None and loss is not None and not 0.0 <= loss <= FLOAT32_MAX:
                reason = (
                    f"loss {loss!r} is no training loss (a cross-entropy of float32 logits, in [0, {FLOAT32_MAX:.3g}])"
                )
            if reason is not None or loss is None:
                self.history.skip(epoch, b, f"label party rejected the embeddings: {reason or 'no loss reported'}")
            else:
                losses[b] = loss
        return losses, outcome.content

    def _apply(self, epoch: int, ids: Mapping[int, NDArray[np.int64]], stepped: list[int], reply: RecordDict) -> None:
        """Send each feature party its usable gradients of the stepped batches now; record every one not applied."""
        self._deferred = self._screen(epoch, ids, stepped, reply)
        self.flush()

    def _screen(
        self, epoch: int, ids: Mapping[int, NDArray[np.int64]], stepped: list[int], reply: RecordDict
    ) -> DeferredGradients:
        """Each feature party's usable gradients of the stepped batches; every unusable one is recorded.

        A gradient that is missing, mis-shaped, not float32, not finite or out of bound is not forwarded: the
        feature party is not asked to apply it and keeps its model, and the reason is recorded.
        """
        deferred = DeferredGradients(epoch, {}, {})
        for party, dim in zip(self.features, self.embedding_dims, strict=True):
            arrays: dict[str, NDArray[Any]] = {}
            sent: list[int] = []
            for b in stepped:
                key = vp.gradient_key(b, party.party_id)
                gradient, problem = embedding_problem(reply, key, (len(ids[b]), dim), self.max_norm, "gradient")
                if gradient is None:
                    self.history.fail_update(epoch, b, party.party_id, f"label party: {problem}")
                    continue
                arrays[vp.ids_key(b)], arrays[vp.gradient_key(b)] = ids[b], gradient
                sent.append(b)
            if sent:
                deferred.arrays[party.node_id], deferred.sent[party.node_id] = arrays, sent
        return deferred

    def _apply_contents(self, deferred: DeferredGradients) -> dict[int, RecordDict]:
        """``train.apply_gradients`` requests of the deferred gradients, for the nodes that have any."""
        return {
            node: request(arrays, epoch=deferred.epoch, batches=deferred.sent[node])
            for node, arrays in deferred.arrays.items()
        }

    def _settle(self, deferred: DeferredGradients, replies: Mapping[int, Outcome]) -> None:
        """Record every deferred gradient a feature party refused, or did not answer for."""
        for party in self.features:
            if party.node_id not in replies:
                continue
            outcome = replies[party.node_id]
            for b in deferred.sent.get(party.node_id, []):
                if outcome.content is None:
                    reason = outcome.problem
                else:
                    reason = scalar_of(outcome.content, vp.CONFIG, vp.rejected_key(b))
                if reason is not None:
                    self.history.fail_update(deferred.epoch, b, party.party_id, party_text(reason))
