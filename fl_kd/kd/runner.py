"""The in-process runner of every KD algorithm: its two halves driven round by round, without Flower.

The generic Flower apps (``strategies/kd*.py``, ``clients/kd_app.py``) drive the same :class:`ServerRole` and
:class:`ClientRole` objects in the same order over messages, so a Flower simulation of a config reproduces this
runner's metrics bit for bit. Per round (see :mod:`fl_kd.kd.roles`):

1. sample clients by ``(seed, round)``; each gets its train instruction, trains and answers;
2. the server checks each answer and aggregates the accepted ones;
3. the sampled clients receive the server's knowledge;
4. the server and every client are evaluated, and the round's metric row is built.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from torch import Tensor

from fl_kd.checkpoint import content_digest
from fl_kd.data import DatasetSplits
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.cost import ClientCost, cost_metrics
from fl_kd.kd.federation import Federation, build_federation, sample_clients
from fl_kd.kd.metrics import Metrics, round_metrics, server_trend
from fl_kd.kd.roles import Answer, Arrays, ClientRole, Instruction, Phase, ServerRole
from fl_kd.kd.validation import check_bounded
from fl_kd.runtime import one_torch_thread

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunResult:
    """Metrics of a run.

    Attributes
    ----------
    rounds : list[dict[str, float | int]]
        One flat metric dict per round (see :func:`fl_kd.kd.metrics.round_metrics`).
    summary : dict[str, float | int]
        Final and best server accuracy, final client accuracies, total traffic and wall time.
    """

    rounds: list[Metrics] = field(default_factory=list)
    summary: Metrics = field(default_factory=dict)


def build_parties(cfg: ExperimentConfig, federation: Federation) -> tuple[ServerRole, list[ClientRole]]:
    """The server half and every client half of ``cfg``'s algorithm, freshly built."""
    algorithm = get_algorithm(cfg.strategy.name)
    server = algorithm.build_server(cfg, federation)
    return server, [algorithm.build_client(cfg, federation, cid) for cid in range(federation.num_clients)]


def run_round(
    cfg: ExperimentConfig, round: int, federation: Federation, server: ServerRole, clients: Sequence[ClientRole]
) -> Metrics:
    """One federated round on already built parties; returns its metric row."""
    start = time.perf_counter()
    selected = sample_clients(federation.num_clients, cfg.strategy.fraction_fit, cfg.seed, round)
    instructions = {cid: server.train_instruction(round, cid) for cid in selected}
    # A client that raises (or refuses an instruction beyond the bound) is what Flower reports as an error reply:
    # it never stops the run, its answer is rejected, and in the evaluate phase its accuracy is left out.
    answers: dict[int, Answer] = {}
    for cid in selected:
        answer = _client_step(clients[cid], "train", clients[cid].train, round, instructions[cid], cfg.max_abs_value)
        if answer is not None:
            answers[cid] = answer
    accepted: dict[int, Arrays] = {}
    for cid, answer in answers.items():
        # The same screen as the Flower strategy's: the generic bound first, then the algorithm's own checks.
        if (check_bounded(answer.arrays, cfg.max_abs_value) or server.check_answer(round, cid, answer.arrays)) is None:
            accepted[cid] = answer.arrays
    server_stats = server.aggregate(round, accepted)
    knowledge = {cid: server.evaluate_instruction(round, cid) for cid in selected}
    costs, failed = {}, set()
    for cid in selected:
        received = _client_step(
            clients[cid], "evaluate", clients[cid].receive, round, knowledge[cid], cfg.max_abs_value
        )
        if received is None:
            failed.add(cid)
        answer = answers.get(cid)
        costs[cid] = ClientCost(
            train_samples=(answer.metrics.get(kd.TRAIN_SAMPLES, 0.0) if answer else 0.0)
            + (received or {}).get(kd.TRAIN_SAMPLES, 0.0),
            uplink_bytes=answer.nbytes if answer else 0,
            downlink_bytes=instructions[cid].nbytes + knowledge[cid].nbytes,
        )
    test_x, test_y = federation.test_set(cfg, round)
    evaluated = set(federation.evaluated_clients(cfg, round)) - failed
    client_acc, client_pacc = evaluate_clients(
        federation, [c for c in clients if c.client_id in evaluated], (test_x, test_y)
    )
    trend = federation.trend_test_set(cfg, round)
    return round_metrics(
        round=round,
        server_acc=server.evaluate(test_x, test_y),
        server_acc_subset=None if trend is None else server.evaluate(*trend),
        client_acc=client_acc,
        client_pacc=client_pacc,
        tiers=federation.tier_names(),
        server_stats=server_stats,
        uplink_bytes=sum(answer.nbytes for answer in answers.values()),
        downlink_bytes=sum(i.nbytes for i in instructions.values()) + sum(k.nbytes for k in knowledge.values()),
        wall_seconds=time.perf_counter() - start,
        n_rejected=len(selected) - len(accepted),
        n_eval_dropped=len(failed),
        cost=round_cost(federation, server, costs),
    )


def _client_step(
    client: ClientRole,
    phase: Phase,
    step: Callable[[int, Instruction], T],
    round: int,
    instruction: Instruction,
    max_abs_value: float,
) -> T | None:
    """``client``'s ``step`` of ``phase`` (its ``train`` or ``receive``) on an instruction it first checks, as the
    ClientApp does: only the array names it takes in that phase, every value finite and within the bound.

    A client that refuses the instruction or raises is logged and gives None, as a Flower error reply would.
    """
    try:
        unasked = sorted(set(instruction.arrays) - client.instruction_names(phase))
        if unasked:
            raise ValueError(f"instruction refused: arrays that were not asked for: {', '.join(unasked)}")
        reason = check_bounded(instruction.arrays, max_abs_value)
        if reason is not None:
            raise ValueError(f"instruction refused: {reason}")
        return step(round, instruction)
    except Exception as err:  # noqa: BLE001 - any client failure must not stop the run
        log.warning("client %d failed: %s: %s", client.client_id, type(err).__name__, err)
        return None


def round_cost(federation: Federation, server: ServerRole, costs: dict[int, ClientCost]) -> Metrics:
    """The round's device cost per tier (both runtimes count it here)."""
    data = federation.data
    models = {cid: server.client_model(cid) for cid in costs}
    return cost_metrics(costs, federation.tiers, tuple(data.input_shape), data.num_classes, models)


class _Evaluable(Protocol):
    client_id: int

    def evaluate(self, x: Tensor, y: Tensor) -> float: ...


def evaluate_clients(
    federation: Federation, clients: Sequence[_Evaluable], test_set: tuple[Tensor, Tensor] | None = None
) -> tuple[dict[int, float], dict[int, float]]:
    """Each client's accuracy on the global test set (or ``test_set``, the round's subset of it) and on its
    personalised test set, by client id. A client role with a personal model
    (:meth:`fl_kd.kd.roles.ClientRole.evaluate_personal`) answers for its own test set with it.

    Clients whose :meth:`~fl_kd.kd.roles.ClientRole.evaluated_model` holds the same weights get the same global
    figure, so it is computed once: after FedAvg's broadcast every client holds the global model, and scoring it
    for each of twenty clients took a third of the time of FedAvg of the server model (162 of 467 s in a profile of
    two rounds, the last on the whole test set).
    """
    test_x, test_y = test_set if test_set is not None else (federation.data.x_test, federation.data.y_test)
    scored: dict[tuple[str, str], float] = {}
    client_acc: dict[int, float] = {}
    for client in clients:
        key = _weights_key(client)
        if key is None:
            client_acc[client.client_id] = client.evaluate(test_x, test_y)
            continue
        if key not in scored:
            scored[key] = client.evaluate(test_x, test_y)
        client_acc[client.client_id] = scored[key]
    client_pacc = {
        client.client_id: getattr(client, "evaluate_personal", client.evaluate)(
            *federation.personalised_test(client.client_id)
        )
        for client in clients
    }
    return client_acc, client_pacc


def _weights_key(client: _Evaluable) -> tuple[str, str] | None:
    """The class of the client and a digest of the weights it is scored with, or None when it does not say."""
    model = getattr(client, "evaluated_model", lambda: None)()
    if model is None:
        return None
    return f"{type(client).__qualname__}/{type(model).__qualname__}", content_digest(model)


@one_torch_thread()
def run_inprocess(
    cfg: ExperimentConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
    checkpoint_out: str | Path | None = None,
) -> RunResult:
    """Run ``cfg.strategy.rounds`` rounds of ``cfg``'s algorithm without Flower.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's configuration.
    data : DatasetSplits | None (default: None)
        Preloaded dataset; loaded from ``cfg.dataset`` when None.
    on_round : Callable[[dict], None] | None (default: None)
        Called with each round's metrics as soon as they exist (progress logging).
    checkpoint_out : str | Path | None (default: None)
        Where to save the final server state, e.g. to start a later federation from it.
    """
    federation = build_federation(cfg, data)
    server, clients = build_parties(cfg, federation)
    result = RunResult()
    for round in range(1, cfg.strategy.rounds + 1):
        metrics = run_round(cfg, round, federation, server, clients)
        result.rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    if checkpoint_out is not None:
        server.save(checkpoint_out)
    # The rounds' seconds, as the Flower runtime sums them: building the federation is neither's round.
    result.summary = summarise(result.rounds, wall_seconds=sum(float(m["wall_seconds"]) for m in result.rounds))
    return result


def summarise(rounds: list[Metrics], wall_seconds: float) -> Metrics:
    """Summary of a run's per-round metrics (shared with the Flower strategy's final report)."""
    summary: Metrics = {"rounds": len(rounds), "wall_seconds": float(wall_seconds)}
    if not rounds:
        return summary
    last = rounds[-1]
    # On one test set (the last round's subset figure where the rounds before it had a subset); an algorithm
    # without a server model reports NaN server accuracy.
    server_accs = [acc for acc in server_trend(rounds) if math.isfinite(acc)]
    summary |= {
        "final_server_acc": last["server_acc"],
        "best_server_acc": max(server_accs) if server_accs else float("nan"),
        "final_client_acc_mean": last.get("client_acc_mean", float("nan")),
        "final_client_pacc_mean": last.get("client_pacc_mean", float("nan")),
        "total_uplink_bytes": int(sum(r["uplink_bytes"] for r in rounds)),
        "total_downlink_bytes": int(sum(r["downlink_bytes"] for r in rounds)),
    }
    return summary
