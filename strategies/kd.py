"""One Message-API strategy for every registered KD algorithm: it moves the algorithm's arrays, nothing more.

The algorithm lives in its :class:`~fl_kd.kd.roles.ServerRole` (FedGEMS, FedMD, FedDF, ...). A round is Flower's
train phase (each sampled client gets its train instruction and answers) and evaluate phase (the sampled clients get
the server's knowledge; every client reports its accuracy), in the order of the in-process runner
(:mod:`fl_kd.kd.runner`), so both give the same metrics for the same seed.

Every reply is checked before it can touch the server: its sender comes from Flower's metadata (the node that
answered, mapped to a partition once at discovery), never from the payload; its arrays are decoded only after their
declared dtype and shape agree with their bytes; it must answer the very message the server sent that node this
round (``reply_to_message_id``), so a stale reply or one to another client's message is refused; every float in it
must be finite and within ``max_abs_value``; then the algorithm checks names, shapes and values. A rejected answer is
logged, counted and left out, exactly as if that client had not answered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.cost import ClientCost
from fl_kd.kd.federation import Federation, sample_clients
from fl_kd.kd.metrics import round_metrics
from fl_kd.kd.roles import Arrays, Instruction, ServerRole
from fl_kd.kd.runner import round_cost
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE, ScreeningReport, check_bounded
from fl_kd.protocol import ProtocolError, decode_record, int_of, number_of, party_text, payload_nbytes

#: The most training samples a client may report for one round: floats stop counting whole numbers beyond it, and
#: no device comes near it.
MAX_REPORTED_SAMPLES = float(2**53)


def unavailable(reply: Message) -> bool:
    """Whether ``reply`` is the SuperLink's error for a node or a reply it cannot deliver, not the node's own: it
    names the SuperLink as its sender and means what no reply means (the node is the one its message went to)."""
    return reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID


class KDStrategy(Strategy):
    """Drive a KD algorithm's server half over Flower messages.

    Parameters
    ----------
    server : ServerRole
        The algorithm's server half.
    federation : Federation
        Test set, device tiers and size of the federation (partition ids ``0..num_clients-1``).
    fraction_train : float (default: 1.0)
        Share of clients sampled per round, as in the in-process runner.
    seed : int (default: 0)
        Seeds client sampling.
    timeout : float (default: 600.0)
        Seconds to wait for replies; a client that has not answered by then counts as missing for the round.
    on_round_end : Callable[[dict], None], optional
        Receives each round's flat metrics (e.g. a :class:`~fl_kd.results.RoundRecorder`).
    max_abs_value : float (default: 1e4)
        Bound on the absolute value of every float in an answer (``ExperimentConfig.max_abs_value``).
    test_set : Callable[[int], tuple[Tensor, Tensor]] | None (default: None)
        The test ``(x, y)`` of a round (``Federation.test_set``); the whole test set every round when None.
    evaluated : Callable[[int], list[int]] | None (default: None)
        The partition ids evaluated in a round (``Federation.evaluated_clients``); every client when None.
    trend_set : Callable[[int], tuple[Tensor, Tensor] | None] | None (default: None)
        A round's second test set for the server (``Federation.trend_test_set``); none when None.
    node_partitions : Mapping[int, int] | None (default: None)
        Node id -> partition, as the deployment registered them (:mod:`fl_kd.kd.node_partitions`); a node whose
        claim disagrees is left out. None: a node's claim is taken while its partition is free (simulation).
    """

    def __init__(
        self,
        server: ServerRole,
        federation: Federation,
        fraction_train: float = 1.0,
        seed: int = 0,
        timeout: float = 600.0,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
        test_set: Callable[[int], tuple[Tensor, Tensor]] | None = None,
        evaluated: Callable[[int], list[int]] | None = None,
        trend_set: Callable[[int], tuple[Tensor, Tensor] | None] | None = None,
        node_partitions: Mapping[int, int] | None = None,
    ) -> None:
        self.server = server
        self.federation = federation
        self.num_clients = federation.num_clients
        self.fraction_train = fraction_train
        self.seed = seed
        self.timeout = timeout
        self.on_round_end = on_round_end
        self.max_abs_value = max_abs_value
        self.test_set = test_set or (lambda _round: (federation.data.x_test, federation.data.y_test))
        self.evaluated = evaluated or (lambda _round: list(range(federation.num_clients)))
        self.trend_set = trend_set or (lambda _round: None)
        self.node_partitions = node_partitions
        self.history: list[dict[str, Any]] = []
        self._nodes: dict[int, int] = {}  # partition id -> node id
        self._partitions: dict[int, int] = {}  # node id -> partition id
        # State of the round in progress.
        self._start = 0.0
        self._selected: list[int] = []
        self._unplaced: list[int] = []
        self._uplink = 0
        self._downlink = 0
        self._screening = ScreeningReport()
        self._server_stats: dict[str, float | int] = {}
        self._costs: dict[int, ClientCost] = {}
        # The messages of the phase in progress, by node id: the grid gives each its id when it sends it.
        self._sent: dict[int, Message] = {}
        self._booked: dict[int, int] = {}  # node id -> downlink bytes booked for the last message built for it

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├── Algorithm: %s", type(self.server).__name__)
        log(INFO, "\t└── Clients: %d, fraction per round %.2f", self.num_clients, self.fraction_train)

    def partition_of(self, node_id: int) -> int | None:
        """The partition (client id) node ``node_id`` identified as at discovery, or None for an unknown node."""
        return self._partitions.get(node_id)

    # -- discovery ---------------------------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Learn each node's partition id, so sampling and reductions follow partition ids, not node ids.

        Every node at the start; later only a node that joined or came back. A node the grid no longer lists (its
        SuperNode left, or Flower marked it offline) is forgotten first, so its partition can be claimed again.
        """
        listed = set(grid.get_node_ids())
        for gone in [node_id for node_id in self._partitions if node_id not in listed]:
            del self._nodes[self._partitions.pop(gone)]
            log(WARNING, "Node %s is gone; its partition can be claimed again", gone)
        node_ids = sorted(listed - set(self._partitions))
        if not node_ids:
            return
        hello = RecordDict({kd.CONFIG: ConfigRecord({kd.ACTION: kd.HELLO})})
        messages = [Message(hello, message_type=MessageType.QUERY, dst_node_id=node_id) for node_id in node_ids]
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        addressee = {message.metadata.message_id: message.metadata.dst_node_id for message in messages}
        for reply in replies:
            if unavailable(reply):
                log(WARNING, "Node %s is unavailable (%s); it is left out for now",
                    addressee.get(reply.metadata.reply_to_message_id, "?"), party_text(reply.error.reason))  # fmt: skip
        replies = [reply for reply in replies if not unavailable(reply)]
        senders = Counter(reply.metadata.src_node_id for reply in replies)
        for node_id in sorted(node for node, count in senders.items() if count > 1):
            # Of two claims neither can be believed, nor the node that makes them.
            log(WARNING, "Node %s answered discovery %d times; it is left out", node_id, senders[node_id])
        for reply in sorted(replies, key=lambda m: m.metadata.src_node_id):
            node_id = reply.metadata.src_node_id
            if senders[node_id] > 1:
                continue
            partition_id = None if reply.has_error() else int_of(reply.content, kd.METRICS, kd.PARTITION_ID)
            if reply.has_error():  # the node's own reason: say, its data folder or node config is wrong
                log(WARNING, "Node %s could not identify itself (%s); it is left out", node_id,
                    party_text(reply.error.reason))  # fmt: skip
            elif node_id not in node_ids or partition_id is None or not 0 <= partition_id < self.num_clients:
                log(WARNING, "Node %s did not identify a valid partition; it is left out", node_id)
            elif self.node_partitions is not None and self.node_partitions.get(node_id) != partition_id:
                pinned = self.node_partitions.get(node_id)
                log(WARNING, "Node %s claims partition %d, but the deployment registered it for %s; it is left out",
                    node_id, partition_id, "no partition" if pinned is None else f"partition {pinned}")  # fmt: skip
            elif partition_id in self._nodes or node_id in self._partitions:
                log(WARNING, "Node %s claims partition %d, already taken; it is left out", node_id, partition_id)
            else:
                self._nodes[partition_id], self._partitions[node_id] = node_id, partition_id
        log(INFO, "Discovered %d of %d clients", len(self._nodes), self.num_clients)

    def _message(self, instruction: Instruction, message_type: str, node_id: int, **config: Any) -> Message:
        self._book_downlink(node_id, instruction.nbytes)
        self._booked[node_id] = instruction.nbytes
        records: dict[str, Any] = {kd.CONFIG: ConfigRecord({**instruction.config, **config})}
        if instruction.arrays:
            records[kd.ARRAYS] = ArrayRecord({name: Array(value) for name, value in instruction.arrays.items()})
        return Message(RecordDict(records), message_type=message_type, dst_node_id=node_id)

    def _book_downlink(self, node_id: int, nbytes: int) -> None:
        self._downlink += nbytes
        partition_id = self._partitions[node_id]
        if partition_id in self._costs:
            self._costs[partition_id].downlink_bytes += nbytes

    def withdraw(self, node_ids: Iterable[int]) -> None:
        """Unbook the last messages built for ``node_ids``, which the round leaves unsent (their nodes are gone)."""
        for node_id in node_ids:
            self._book_downlink(node_id, -self._booked.pop(node_id, 0))
            self._sent.pop(node_id, None)

    # -- train -------------------------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Give each sampled client its train instruction."""
        self._discover(grid)
        self._start = time.perf_counter()
        self._uplink = self._downlink = 0
        self._booked = {}
        sampled = sample_clients(self.num_clients, self.fraction_train, self.seed, server_round)
        self._selected = [pid for pid in sampled if pid in self._nodes]
        self._unplaced = [pid for pid in sampled if pid not in self._nodes]  # no node holds them: missing too
        if self._unplaced:
            log(WARNING, "Round %d: no node holds the sampled partition(s) %s", server_round, self._unplaced)
        self._costs = {pid: ClientCost() for pid in self._selected}
        messages = [
            self._message(
                self.server.train_instruction(server_round, pid),
                MessageType.TRAIN,
                self._nodes[pid],
                **{kd.SERVER_ROUND: server_round},
            )
            for pid in self._selected
        ]
        self._sent = {message.metadata.dst_node_id: message for message in messages}
        return messages

    def _answers_ours(self, reply: Message) -> bool:
        """Whether ``reply`` answers the message this phase sent its node (not a stale or someone else's one)."""
        sent = self._sent.get(reply.metadata.src_node_id)
        return sent is not None and reply.metadata.reply_to_message_id == sent.metadata.message_id

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every answer, then let the algorithm aggregate the accepted ones."""
        replies = list(replies)
        # Rejected answers crossed the wire too, so their bytes count; the training a client reports counts only
        # from its one reply to this round's message (a stale or repeated reply would book it again).
        self._uplink = 0
        sole = self._sole_replies(replies)
        for reply in replies:
            if reply.has_error():
                continue
            nbytes = payload_nbytes(reply.content)
            self._uplink += nbytes
            self._add_cost(reply, uplink_bytes=nbytes, book_training=id(reply) in sole)
        answers, self._screening = self._screen(server_round, replies)
        for reason, count in self._screening.rejected.items():
            log(WARNING, "Round %d: dropped %d answer(s): %s", server_round, count, reason)
        silent = [pid for pid in self._screening.missing if pid not in self._unplaced]  # those were asked
        if silent:
            log(WARNING, "Round %d: no answer from clients %s", server_round, silent)
        self._server_stats = self.server.aggregate(server_round, answers)
        return None, MetricRecord({key: float(value) for key, value in self._server_stats.items()})

    def _sole_replies(self, replies: list[Message]) -> set[int]:
        """``id()`` of each reply that answers this phase's message to its node and is that node's only such reply
        (of two, neither can be believed)."""
        ours = [reply for reply in replies if self._answers_ours(reply)]
        senders = Counter(reply.metadata.src_node_id for reply in ours)
        return {id(reply) for reply in ours if senders[reply.metadata.src_node_id] == 1}

    def _add_cost(self, reply: Message, uplink_bytes: int = 0, book_training: bool = True) -> None:
        """Book a sampled client's reported training samples (a cost figure only: never trusted for learning).

        A count outside ``[0, MAX_REPORTED_SAMPLES]`` is logged and booked as none: no device trains that much in a
        round, and a figure near the float limit would overflow the round's cost figures and stop the run.
        """
        partition_id = self._partitions.get(reply.metadata.src_node_id, -1)
        cost = self._costs.get(partition_id)
        if cost is None:
            return
        samples = number_of(reply.content, kd.METRICS, kd.TRAIN_SAMPLES) if book_training else None
        if samples is not None and not 0.0 <= samples <= MAX_REPORTED_SAMPLES:
            log(WARNING, "Client %d reported %g training samples; booked as none", partition_id, samples)
            samples = None
        cost.train_samples += samples or 0.0
        cost.uplink_bytes += uplink_bytes

    def _screen(self, server_round: int, replies: list[Message]) -> tuple[dict[int, Arrays], ScreeningReport]:
        """Keep answers that are exactly what was asked; drop and count the rest."""
        report = ScreeningReport()
        by_client: dict[int, list[Message]] = {}
        raised: set[int] = set()  # replied with an error: rejected, not missing as well
        for reply in replies:
            partition_id = self._partitions.get(reply.metadata.src_node_id)
            if unavailable(reply):
                continue  # missing, as after a timeout
            if reply.has_error():
                report.reject(f"client error: {party_text(reply.error.reason)}")
                if partition_id is not None:
                    raised.add(partition_id)
            elif partition_id is None or partition_id not in self._selected:
                report.reject("reply from a client that was not asked")
            elif not self._answers_ours(reply):
                report.reject("reply to a message the server did not send this client this round")
            else:
                by_client.setdefault(partition_id, []).append(reply)
        answers: dict[int, Arrays] = {}
        for partition_id, client_replies in sorted(by_client.items()):
            if len(client_replies) > 1:
                for _ in client_replies:
                    report.reject("duplicate replies from one client")
                continue
            try:
                names = self.server.answer_names(server_round, partition_id)
                arrays = decode_record(client_replies[0].content, kd.ARRAYS, names)
            except ProtocolError as err:
                report.reject(f"client {partition_id}: {err}")
                continue
            reason = check_bounded(arrays, self.max_abs_value) or self.server.check_answer(
                server_round, partition_id, arrays
            )
            if reason is not None:
                report.reject(f"client {partition_id}: {reason}")
                continue
            answers[partition_id] = arrays
            report.accepted.append(partition_id)
        asked = [pid for pid in self._selected if pid not in by_client and pid not in raised]
        report.missing = sorted(self._unplaced + asked)
        return answers, report

    # -- evaluate ----------------------------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The sampled clients take in the server's knowledge; the evaluated ones report their test accuracy.

        Only those two groups get a message, so a round costs what its sampled clients cost, not the federation.
        """
        messages, self._booked = [], {}
        evaluated = set(self.evaluated(server_round))
        for partition_id, node_id in sorted(self._nodes.items()):
            selected = partition_id in self._selected
            if not selected and partition_id not in evaluated:
                continue
            instruction = self.server.evaluate_instruction(server_round, partition_id) if selected else Instruction()
            flags = {kd.SERVER_ROUND: server_round, kd.DISTILL: selected, kd.EVALUATE: partition_id in evaluated}
            messages.append(self._message(instruction, MessageType.EVALUATE, node_id, **flags))
        self._sent = {message.metadata.dst_node_id: message for message in messages}
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Combine client accuracies per tier, add the server's test accuracy, and record the round."""
        client_acc: dict[int, float] = {}
        client_pacc: dict[int, float] = {}
        replies = list(replies)
        sole = self._sole_replies(replies)
        evaluated = set(self.evaluated(server_round))
        dropped = ScreeningReport()
        for reply in replies:
            partition_id = self._partitions.get(reply.metadata.src_node_id)
            if unavailable(reply):
                continue  # as after a timeout
            if reply.has_error():  # a sampled client that fails here did not take in the server's knowledge
                dropped.reject(f"client error in the evaluate phase: {party_text(reply.error.reason)}")
                continue
            if partition_id is None or id(reply) not in sole:
                dropped.reject("evaluate reply from a client not asked, to another message, or repeated")
                continue
            self._add_cost(reply)
            acc = number_of(reply.content, kd.METRICS, kd.ACCURACY)
            pacc = number_of(reply.content, kd.METRICS, kd.PERSONALISED_ACCURACY)
            if partition_id not in evaluated:  # not asked this round: its figures would skew the round's mean
                continue
            if acc is not None and pacc is not None and 0.0 <= acc <= 1.0 and 0.0 <= pacc <= 1.0:
                client_acc[partition_id], client_pacc[partition_id] = acc, pacc
            else:
                dropped.reject(f"client {partition_id}: accuracies missing or outside [0, 1]")
        for reason, count in dropped.rejected.items():
            log(WARNING, "Round %d: dropped %d evaluate reply(ies): %s", server_round, count, reason)
        trend = self.trend_set(server_round)
        row = round_metrics(
            round=server_round,
            server_acc=self.server.evaluate(*self.test_set(server_round)),
            server_acc_subset=None if trend is None else self.server.evaluate(*trend),
            client_acc=client_acc,
            client_pacc=client_pacc,
            tiers=self.federation.tier_names(),
            server_stats=self._server_stats,
            uplink_bytes=self._uplink,
            downlink_bytes=self._downlink,
            wall_seconds=time.perf_counter() - self._start,
            n_rejected=self._screening.num_rejected,
            n_eval_dropped=dropped.num_rejected,
            n_missing=len(self._screening.missing),
            cost=round_cost(self.federation, self.server, self._costs),
        )
        self.history.append(row)
        if self.on_round_end is not None:
            self.on_round_end(row)
        return MetricRecord({key: float(value) for key, value in row.items()})
