"""FedGEMS-like selective knowledge distillation as a Flower Message-API strategy.

Cheng et al., "FedGEMS: Federated Learning of Larger Server Models via Selective Knowledge Fusion",
arXiv:2110.11027. The strategy only moves arrays; the algorithm lives in :mod:`fl_kd.kd`.

One round is two exchanges, mapped onto :meth:`Strategy.start`'s train and evaluate phases:

1. *train*: sampled clients train on their private data and answer the server's query, i.e. their logits on
   the transfer samples the server still needs (wrong and uncached). The server screens the answers, distils
   selectively, and returns its logits on the whole transfer set.
2. *evaluate*: the same clients distil from the server's logits and report their test accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.federation import sample_clients
from fl_kd.kd.fedgems.server import SelectionStats, SelectiveDistillServer
from fl_kd.kd.metrics import downlink_nbytes, round_metrics
from fl_kd.kd.validation import ScreeningReport, check_client_answer, find_duplicates
from fl_kd.protocol import ProtocolError, array_of, int_of, number_of, payload_nbytes


class FedGEMS(Strategy):
    """Selective distillation into a large server model.

    Parameters
    ----------
    server : SelectiveDistillServer
        Server model, knowledge cache and transfer set.
    test_x, test_y : Tensor
        Global test set for the server model's accuracy.
    client_tiers : Mapping[int, str]
        Device-tier name of each partition id (for per-tier client metrics).
    num_clients : int
        Size of the federation (partition ids ``0..num_clients-1``).
    fraction_train : float (default: 1.0)
        Share of clients sampled per round, as in the reference runner.
    seed : int (default: 0)
        Seeds client sampling.
    logits_dtype : str (default: "float32")
        Dtype of the broadcast server logits (``"float16"`` halves the downlink).
    timeout : float (default: 600.0)
        Seconds to wait for replies; a client that has not answered by then counts as missing for the round.
    on_round_end : Callable[[dict], None], optional
        Receives each round's flat metrics (e.g. a :class:`~fl_kd.results.RoundRecorder`).
    """

    def __init__(
        self,
        server: SelectiveDistillServer,
        test_x: Tensor,
        test_y: Tensor,
        client_tiers: Mapping[int, str],
        num_clients: int,
        fraction_train: float = 1.0,
        seed: int = 0,
        logits_dtype: str = "float32",
        timeout: float = 600.0,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.server = server
        self.test_x, self.test_y = test_x, test_y
        self.client_tiers = dict(client_tiers)
        self.num_clients = num_clients
        self.fraction_train = fraction_train
        self.seed = seed
        self.logits_dtype = np.dtype(logits_dtype)
        self.timeout = timeout
        self.on_round_end = on_round_end
        self.history: list[dict[str, Any]] = []
        self._nodes: dict[int, int] = {}  # partition id -> node id
        # State of the round in progress, set by configure_train and aggregate_train.
        self._start = 0.0
        self._selected: list[int] = []
        self._query: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._uplink = 0
        self._answers: dict[int, tuple[NDArray[Any], NDArray[Any]]] = {}
        self._screening = ScreeningReport()
        self._stats = SelectionStats(round=0)
        self._broadcast: NDArray[Any] = np.zeros((0, 0), dtype=np.float32)

    def summary(self) -> None:
        """Log the strategy's settings."""
        cfg = self.server.config
        log(INFO, "\t├── Clients: %d, fraction per round %.2f", self.num_clients, self.fraction_train)
        log(INFO, "\t├── Transfer set: %d samples, logits %s", self.server.num_transfer, self.logits_dtype.name)
        log(
            INFO,
            "\t└── Server distillation: epochs %d, lr %g, epsilon %g, temperature %g, weighting %s",
            cfg.epochs,
            cfg.lr,
            cfg.epsilon,
            cfg.temperature,
            cfg.weighting,
        )

    # -- discovery ---------------------------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Learn each node's partition id once, so sampling and reductions follow partition ids, not node ids."""
        node_ids = sorted(grid.get_node_ids())
        messages = [
            Message(
                RecordDict({kd.CONFIG: ConfigRecord({kd.ACTION: kd.HELLO})}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        for reply in sorted(replies, key=lambda m: m.metadata.src_node_id):
            partition_id = _partition_id(reply)
            if partition_id is None or not 0 <= partition_id < self.num_clients:
                log(WARNING, "Node %s did not identify a valid partition; it is left out", reply.metadata.src_node_id)
            elif partition_id in self._nodes:
                log(WARNING, "Two nodes claim partition %d; keeping the first", partition_id)
            else:
                self._nodes[partition_id] = reply.metadata.src_node_id
        log(INFO, "Discovered %d of %d clients", len(self._nodes), self.num_clients)

    # -- train: local training + on-demand query -----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask the sampled clients to train locally and to answer the query for the transfer samples still needed."""
        if not self._nodes:
            self._discover(grid)
        self._start = time.perf_counter()
        sampled = sample_clients(self.num_clients, self.fraction_train, self.seed, server_round)
        self._selected = [pid for pid in sampled if pid in self._nodes]
        self._query = self.server.needed_positions()
        content = RecordDict(
            {
                kd.ARRAYS: ArrayRecord({kd.POSITIONS: Array(self._query)}),
                kd.CONFIG: ConfigRecord({kd.SERVER_ROUND: server_round, kd.LOGITS_DTYPE: self.logits_dtype.name}),
            }
        )
        return [
            Message(content, message_type=MessageType.TRAIN, dst_node_id=self._nodes[pid]) for pid in self._selected
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the answers, distil selectively, and return the server's logits for the broadcast."""
        replies = list(replies)
        # Rejected answers crossed the wire too, so they count.
        self._uplink = sum(payload_nbytes(reply.content) for reply in replies if not reply.has_error())
        self._answers, self._screening = self._screen(replies)
        for reason, count in self._screening.rejected.items():
            log(WARNING, "Round %d: dropped %d answer(s): %s", server_round, count, reason)
        if self._screening.missing:
            log(WARNING, "Round %d: no answer from clients %s", server_round, self._screening.missing)
        self._stats = self.server.distill(server_round, self._answers)
        self._broadcast = self.server.transfer_logits(self.logits_dtype)
        return ArrayRecord({kd.SERVER_LOGITS: Array(self._broadcast)}), MetricRecord(_floats(self._stats.as_metrics()))

    def _screen(self, replies: list[Message]) -> tuple[dict[int, tuple[NDArray[Any], NDArray[Any]]], ScreeningReport]:
        """Keep answers that are exactly what was asked; drop and count the rest."""
        report = ScreeningReport()
        identified: list[tuple[int, Message]] = []
        for reply in replies:
            if reply.has_error():
                report.reject(f"client error: {reply.error.reason}")
                continue
            partition_id = _partition_id(reply)
            if partition_id is None or partition_id not in self._selected:
                report.reject("reply from a client that was not asked")
                continue
            identified.append((partition_id, reply))
        duplicates = find_duplicates(pid for pid, _ in identified)
        answers: dict[int, tuple[NDArray[Any], NDArray[Any]]] = {}
        for partition_id, reply in sorted(identified, key=lambda item: item[0]):
            if partition_id in duplicates:
                report.reject("duplicate replies from one client")
                continue
            try:
                positions = array_of(reply.content, kd.ARRAYS, kd.POSITIONS)
                logits = array_of(reply.content, kd.ARRAYS, kd.LOGITS)
            except ProtocolError as err:
                report.reject(f"client {partition_id}: {err}")
                continue
            reason = check_client_answer(self._query, positions, logits, self.server.num_classes)
            if reason is not None:
                report.reject(f"client {partition_id}: {reason}")
                continue
            assert positions is not None and logits is not None
            answers[partition_id] = (positions, logits)
            report.accepted.append(partition_id)
        answered = {pid for pid, _ in identified}
        report.missing = [pid for pid in self._selected if pid not in answered]
        return answers, report

    # -- evaluate: clients distil from the server and report accuracy ---------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Selected clients distil from the server's logits; every client reports its test accuracy."""
        messages = []
        for partition_id, node_id in sorted(self._nodes.items()):
            selected = partition_id in self._selected
            records: dict[str, Any] = {kd.CONFIG: ConfigRecord({kd.SERVER_ROUND: server_round, kd.DISTILL: selected})}
            if selected:
                records[kd.ARRAYS] = arrays
            messages.append(Message(RecordDict(records), message_type=MessageType.EVALUATE, dst_node_id=node_id))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Combine client accuracies per tier, add the server's test accuracy, and record the round."""
        client_acc: dict[int, float] = {}
        client_pacc: dict[int, float] = {}
        for reply in replies:
            partition_id = _partition_id(reply)
            acc, pacc = _metric(reply, kd.ACCURACY), _metric(reply, kd.PERSONALISED_ACCURACY)
            if partition_id is None or partition_id in client_acc or acc is None or pacc is None:
                continue
            if np.isfinite(acc) and np.isfinite(pacc):
                client_acc[partition_id], client_pacc[partition_id] = acc, pacc
        row = round_metrics(
            round=server_round,
            server_acc=self.server.evaluate(self.test_x, self.test_y),
            client_acc=client_acc,
            client_pacc=client_pacc,
            tiers=self.client_tiers,
            server_stats=self._stats.round_metrics(),
            uplink_bytes=self._uplink,
            downlink_bytes=downlink_nbytes(self._query, self._broadcast, len(self._selected)),
            wall_seconds=time.perf_counter() - self._start,
            n_rejected=self._screening.num_rejected,
            n_missing=len(self._screening.missing),
        )
        self.history.append(row)
        if self.on_round_end is not None:
            self.on_round_end(row)
        return MetricRecord(_floats(row))


def _floats(values: Mapping[str, float | int]) -> dict[str, MetricRecordValues]:
    return {key: float(value) for key, value in values.items()}


def _metric(reply: Message, key: str) -> float | None:
    """A finite scalar metric of a reply, or None (error reply, absent, or not a number: a client may send anything)."""
    return None if reply.has_error() else number_of(reply.content, kd.METRICS, key)


def _partition_id(reply: Message) -> int | None:
    return None if reply.has_error() else int_of(reply.content, kd.METRICS, kd.PARTITION_ID)
