"""The ServerApp's round loop, made to survive faults: per-phase timeouts, a quorum, progress after every round.

Flower's ``Strategy.start`` runs train then evaluate for each round and waits as long as it is told; this loop does
the same with the same strategy methods, and also:

* waits at most ``round_timeout_s`` per phase (:class:`~fl_kd.kd.round_policy.RoundPolicy`); a node that has not
  answered its train message by then (e.g. its SuperNode died) is logged, gets no evaluate message that round, and
  the round completes with the others;
* stops the run (:class:`~fl_kd.kd.round_policy.QuorumError`) if fewer than ``min_clients`` clients replied to the
  train phase, before the server learns from the round, so the last complete round stays the saved one; a client
  whose ClientApp raised did reply (its node is alive): its answer is rejected and the run goes on, as in-process;
* writes the server's progress atomically after every round (:mod:`fl_kd.kd.progress`), and with ``resume`` restores
  the server's whole state and starts after the last saved round, for every algorithm alike;
* tells every client, in each message (:data:`~fl_kd.kd.protocol.CLIENT_STATE_ROUND`), the round of the state it
  must hold: the last round whose train message it answered. A client that lost its state (a resumed run is a new
  Flower run; a restarted SuperNode) reloads exactly that round's state from its node, or refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from fl_kd.checkpoint import CheckpointError, state_digests
from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.progress import Progress, restore_server, save_progress
from fl_kd.kd.round_policy import RoundPolicy
from fl_kd.strategies.kd import KDStrategy


def run_rounds(
    strategy: KDStrategy,
    grid: Grid,
    num_rounds: int,
    policy: RoundPolicy,
    out_dir: Path,
    experiment_json: str,
    resumed: Progress | None = None,
) -> None:
    """Run rounds ``1..num_rounds`` (or those after ``resumed.round``), saving progress after each.

    ``strategy`` must be freshly built: its server is the baseline the saved states are told apart from, and with
    ``resumed`` it is loaded with the saved round's state.

    Raises
    ------
    ConfigError
        ``policy.resume`` for an algorithm whose server state cannot be saved (the reason is named).
    ProgressError
        ``resumed``'s server checkpoint does not fit this server.
    """
    baseline = _baseline(strategy, policy)
    first = 1
    client_rounds: dict[int, int] = {}
    if resumed is not None:
        restore_server(strategy.server, resumed)
        resumed.restore_rng()
        first = resumed.round + 1
        strategy.history[:] = resumed.history
        client_rounds = dict(resumed.client_rounds)
        log(INFO, "Resuming after round %d of %d", resumed.round, num_rounds)
    arrays = ArrayRecord()
    for server_round in range(first, num_rounds + 1):
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        _tell_state_rounds(strategy, messages, client_rounds)
        replies = list(grid.send_and_receive(messages, timeout=policy.round_timeout_s))
        silent = _silent_nodes(messages, replies)
        gone = silent - _raised_nodes(replies)  # a node whose ClientApp raised replied at once, and is alive
        if gone:
            log(WARNING, "Round %d: no train answer from node(s) %s within %g s; going on without them",
                server_round, sorted(gone), policy.round_timeout_s)  # fmt: skip
        policy.check_quorum(server_round, len(messages) - len(gone), len(messages))
        for message in messages:  # a client that answered trained: its state is now this round's
            partition_id = strategy.partition_of(message.metadata.dst_node_id)
            if message.metadata.dst_node_id not in silent and partition_id is not None:
                client_rounds[partition_id] = server_round
        _, train_metrics = strategy.aggregate_train(server_round, replies)
        log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)  # as Flower's Strategy.start logs it
        evaluate = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        strategy.withdraw(gone)  # its bytes were booked as the message was built; it is not sent
        evaluate = [message for message in evaluate if message.metadata.dst_node_id not in gone]  # raised: still sent
        _tell_state_rounds(strategy, evaluate, client_rounds)
        evaluated = list(grid.send_and_receive(evaluate, timeout=policy.round_timeout_s))
        # A client that took in this round's knowledge holds this round's state, even where its training failed.
        for node_id in _distilled_nodes(evaluate, evaluated):
            if (partition_id := strategy.partition_of(node_id)) is not None:
                client_rounds[partition_id] = server_round
        metrics = strategy.aggregate_evaluate(server_round, evaluated)
        log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        save_progress(
            out_dir, server_round, strategy.server, strategy.history, experiment_json, baseline, client_rounds
        )


def _baseline(strategy: KDStrategy, policy: RoundPolicy) -> dict[str, str] | None:
    """Digests of the freshly built server's arrays and models; None (and a warning) when its state cannot be saved.

    Raises
    ------
    ConfigError
        ``policy.resume`` is set but the server's state cannot be saved, so no run of this algorithm can resume.
    """
    try:
        return state_digests(strategy.server)
    except CheckpointError as err:
        name = type(strategy.server).__name__
        if policy.resume:
            raise ConfigError(f"resume=true: {name} cannot resume, its server state cannot be saved ({err})") from None
        log(WARNING, "%s's server state cannot be saved (%s); this run will not be resumable", name, err)
        return None


def _tell_state_rounds(strategy: KDStrategy, messages: Iterable[Message], client_rounds: Mapping[int, int]) -> None:
    """Add to each message the round of the state its client must hold (0: none yet, its seeded model)."""
    for message in messages:
        partition_id = strategy.partition_of(message.metadata.dst_node_id)
        state_round = client_rounds.get(partition_id, 0) if partition_id is not None else 0
        message.content.config_records[kd.CONFIG][kd.CLIENT_STATE_ROUND] = state_round


def _raised_nodes(replies: list[Message]) -> set[int]:
    """Nodes whose ClientApp raised: alive, but without an answer (Flower kept their state as it was)."""
    return {
        reply.metadata.src_node_id
        for reply in replies
        if reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    }


def _distilled_nodes(messages: list[Message], replies: list[Message]) -> set[int]:
    """Nodes sent the server's knowledge (``distill``) that replied without an error: they saved a state of the
    round."""
    sent = {
        message.metadata.dst_node_id
        for message in messages
        if message.content.config_records[kd.CONFIG].get(kd.DISTILL) is True
    }
    return sent - _silent_nodes(messages, replies)


def _silent_nodes(messages: list[Message], replies: list[Message]) -> set[int]:
    """Nodes sent a message that sent back no reply, or an error (e.g. Flower's "node unavailable")."""
    answered = {reply.metadata.src_node_id for reply in replies if not reply.has_error()}
    return {message.metadata.dst_node_id for message in messages} - answered
