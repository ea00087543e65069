"""Reference runner: selective distillation (FedGEMS, Cheng et al., 2021, arXiv:2110.11027) in-process.

It drives the same server and client classes as the Flower apps, in the same order, with parties built by the
same :mod:`fl_kd.kd.federation` functions, so a Flower simulation of the same config must reproduce its
metrics. Per round t:

1. the selected clients train locally on their private data;
2. the server asks them for logits on the transfer samples it gets wrong and has not cached, and distils
   selectively (label, knowledge cache, or correct clients weighted by 1/entropy);
3. the server broadcasts its transfer-set logits and the selected clients distil them;
4. the server and all clients are evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fl_kd.data import DatasetSplits
from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ReferenceConfig
from fl_kd.kd.federation import Federation, build_client, build_federation, build_server, sample_clients
from fl_kd.kd.metrics import Metrics, downlink_nbytes, round_metrics, uplink_nbytes
from fl_kd.kd.server import SelectiveDistillServer


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


def run_round(
    cfg: ReferenceConfig,
    round: int,
    federation: Federation,
    server: SelectiveDistillServer,
    clients: list[DistillClient],
) -> Metrics:
    """One federated round on already built parties; returns its metric dict."""
    start = time.perf_counter()
    selected = sample_clients(federation.num_clients, cfg.fraction_fit, cfg.seed, round)
    for client_id in selected:
        clients[client_id].local_train(round)

    query = server.needed_positions()
    answers = {
        client_id: (query, clients[client_id].logits(query, cfg.logits_dtype)) for client_id in selected
    }
    stats = server.distill(round, answers)

    broadcast = server.transfer_logits(cfg.logits_dtype)
    for client_id in selected:
        clients[client_id].distill(round, broadcast)

    data = federation.data
    client_acc, client_pacc = evaluate_clients(federation, clients)
    return round_metrics(
        round=round,
        server_acc=server.evaluate(data.x_test, data.y_test),
        client_acc=client_acc,
        client_pacc=client_pacc,
        tiers=federation.tier_names(),
        stats=stats,
        uplink_bytes=uplink_nbytes(answers),
        downlink_bytes=downlink_nbytes(query, broadcast, len(selected)),
        wall_seconds=time.perf_counter() - start,
    )


def evaluate_clients(
    federation: Federation, clients: list[DistillClient]
) -> tuple[dict[int, float], dict[int, float]]:
    """Each client's accuracy on the global test set and on its personalised test set, by client id."""
    data = federation.data
    client_acc = {client.client_id: client.evaluate(data.x_test, data.y_test) for client in clients}
    client_pacc = {
        client.client_id: client.evaluate(*federation.personalised_test(client.client_id)) for client in clients
    }
    return client_acc, client_pacc


def run_reference(
    cfg: ReferenceConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
    checkpoint_out: str | Path | None = None,
) -> RunResult:
    """Run ``cfg.rounds`` rounds of selective distillation without Flower.

    Parameters
    ----------
    cfg : ReferenceConfig
        The run's configuration.
    data : DatasetSplits | None (default: None)
        Preloaded dataset; loaded from ``cfg.dataset`` when None.
    on_round : Callable[[dict], None] | None (default: None)
        Called with each round's metrics as soon as they exist (progress logging).
    checkpoint_out : str | Path | None (default: None)
        Where to save the final server (model + knowledge cache), e.g. to start a later federation from it.

    Returns
    -------
    RunResult
        Per-round metrics and a summary.
    """
    start = time.perf_counter()
    federation = build_federation(cfg, data)
    server = build_server(cfg, federation)
    clients = [build_client(cfg, federation, client_id) for client_id in range(federation.num_clients)]
    result = RunResult()
    for round in range(1, cfg.rounds + 1):
        metrics = run_round(cfg, round, federation, server, clients)
        result.rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    if checkpoint_out is not None:
        server.save(checkpoint_out)
    result.summary = summarise(result.rounds, wall_seconds=time.perf_counter() - start)
    return result


def summarise(rounds: list[Metrics], wall_seconds: float) -> Metrics:
    """Summary of a run's per-round metrics (shared with the Flower strategy's final report)."""
    summary: Metrics = {"rounds": len(rounds), "wall_seconds": float(wall_seconds)}
    if not rounds:
        return summary
    last = rounds[-1]
    summary |= {
        "final_server_acc": last["server_acc"],
        "best_server_acc": max(r["server_acc"] for r in rounds),
        "final_client_acc_mean": last.get("client_acc_mean", float("nan")),
        "final_client_pacc_mean": last.get("client_pacc_mean", float("nan")),
        "total_uplink_bytes": int(sum(r["uplink_bytes"] for r in rounds)),
        "total_downlink_bytes": int(sum(r["downlink_bytes"] for r in rounds)),
    }
    return summary
