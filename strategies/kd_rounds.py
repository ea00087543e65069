"""The ServerApp's round loop, made to survive faults: per-phase timeouts, a quorum, progress after every round.

Flower's ``Strategy.start`` runs train then evaluate for each round and waits as long as it is told; this loop does
the same with the same strategy methods, and also:

* waits at most ``round_timeout_s`` per phase (:class:`~fl_kd.kd.round_policy.RoundPolicy`); a node that has not
  answered its train message by then (e.g. its SuperNode died) is logged, gets no evaluate message that round, and
  the round completes with the others;
* stops the run (:class:`~fl_kd.kd.round_policy.QuorumError`) if fewer than ``min_clients`` clients answered the
  train phase, before the server learns from the round, so the last complete round stays the saved one;
* writes the server's progress atomically after every round (:mod:`fl_kd.kd.progress`), and with ``resume`` starts
  after the last saved round.
"""

from __future__ import annotations

import dataclasses
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.progress import Progress, ProgressError, save_progress
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
    """Run rounds ``1..num_rounds`` (or those after ``resumed.round``), saving progress after each."""
    first = 1
    if resumed is not None:
        first = resumed.round + 1
        strategy.history[:] = resumed.history
        log(INFO, "Resuming after round %d of %d", resumed.round, num_rounds)
    arrays = ArrayRecord()
    for server_round in range(first, num_rounds + 1):
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = list(grid.send_and_receive(messages, timeout=policy.round_timeout_s))
        silent = _silent_nodes(messages, replies)
        if silent:
            log(WARNING, "Round %d: no train answer from node(s) %s within %g s; going on without them",
                server_round, sorted(silent), policy.round_timeout_s)  # fmt: skip
        policy.check_quorum(server_round, len(messages) - len(silent), len(messages))
        _, train_metrics = strategy.aggregate_train(server_round, replies)
        log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)  # as Flower's Strategy.start logs it
        evaluate = [
            message
            for message in strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
            if message.metadata.dst_node_id not in silent
        ]
        metrics = strategy.aggregate_evaluate(
            server_round, grid.send_and_receive(evaluate, timeout=policy.round_timeout_s)
        )
        log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        save_progress(out_dir, server_round, strategy.server, strategy.history, experiment_json)


def resume_config(cfg: ExperimentConfig, resumed: Progress) -> ExperimentConfig:
    """``cfg`` with its server restored from the saved round (through the strategy's ``checkpoint`` setting).

    Raises
    ------
    ProgressError
        The strategy has no ``checkpoint`` setting, so its server cannot be restored.
    """
    if not hasattr(cfg.strategy, "checkpoint"):
        raise ProgressError(f"strategy {cfg.strategy.name!r} cannot restore its server (no checkpoint setting)")
    strategy = dataclasses.replace(cfg.strategy, checkpoint=str(resumed.server_checkpoint))  # type: ignore[call-arg]
    return dataclasses.replace(cfg, strategy=strategy)


def _silent_nodes(messages: list[Message], replies: list[Message]) -> set[int]:
    """Nodes sent a message that sent back no reply, or an error (e.g. Flower's "node unavailable")."""
    answered = {reply.metadata.src_node_id for reply in replies if not reply.has_error()}
    return {message.metadata.dst_node_id for message in messages} - answered
