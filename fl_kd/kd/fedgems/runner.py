"""Reference runner of FedGEMS-like selective distillation: the algorithm in-process, without Flower.

It drives the same server and client classes as the Flower apps, in the same order, with parties built by the
same :mod:`fl_kd.kd.federation` functions, so a Flower simulation of the same config must reproduce its
metrics. Per round t:

1. the selected clients train locally on their private data;
2. the server asks them for logits on the transfer samples it gets wrong and has not cached, and distils
   selectively (label, knowledge cache, or correct clients weighted by the fusion rule);
3. the server broadcasts its transfer-set logits and the selected clients distil them;
4. the server and all clients are evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fl_kd.data import DatasetSplits
from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, build_federation, prepare_device, sample_clients
from fl_kd.kd.fedgems.config import FedGEMSConfig
from fl_kd.kd.fedgems.server import SelectiveDistillServer
from fl_kd.kd.metrics import Metrics, downlink_nbytes, round_metrics, uplink_nbytes
from fl_kd.kd.runner import RunResult, evaluate_clients, summarise
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model


def fedgems_config(cfg: ExperimentConfig) -> FedGEMSConfig:
    """The run's strategy settings, which must be FedGEMS's."""
    if not isinstance(cfg.strategy, FedGEMSConfig):
        raise TypeError(f"strategy {cfg.strategy.name!r} is not FedGEMS-like selective distillation")
    return cfg.strategy


def preflight(cfg: ExperimentConfig) -> None:
    """Load the data and build the server as the ServerApp will (a bad dataset or checkpoint fails here)."""
    build_server(cfg, build_federation(cfg))


def build_server(cfg: ExperimentConfig, federation: Federation) -> SelectiveDistillServer:
    """The server with its freshly seeded model, restored from ``strategy.checkpoint`` when one is given."""
    prepare_device(cfg)
    strategy = fedgems_config(cfg)
    data = federation.data
    model = build_model(
        cfg.device_profile.server_model,
        data.input_shape,
        data.num_classes,
        seed=derive_seed(cfg.seed, SERVER_ID, "model_init"),
    )
    server = SelectiveDistillServer(
        model,
        federation.transfer_x,
        federation.transfer_y,
        strategy.server_config(),
        seed=cfg.seed,
        device=cfg.device,
    )
    if strategy.checkpoint is not None:
        server.load(strategy.checkpoint)
    return server


def run_round(
    cfg: ExperimentConfig,
    round: int,
    federation: Federation,
    server: SelectiveDistillServer,
    clients: list[DistillClient],
) -> Metrics:
    """One federated round on already built parties; returns its metric dict."""
    start = time.perf_counter()
    strategy = fedgems_config(cfg)
    selected = sample_clients(federation.num_clients, strategy.fraction_fit, cfg.seed, round)
    for client_id in selected:
        clients[client_id].local_train(round)

    query = server.needed_positions()
    answers = {
        client_id: (query, clients[client_id].logits(query, strategy.logits_dtype)) for client_id in selected
    }
    stats = server.distill(round, answers)

    broadcast = server.transfer_logits(strategy.logits_dtype)
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
        server_stats=stats.round_metrics(),
        uplink_bytes=uplink_nbytes(answers),
        downlink_bytes=downlink_nbytes(query, broadcast, len(selected)),
        wall_seconds=time.perf_counter() - start,
    )


def run_reference(
    cfg: ExperimentConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
    checkpoint_out: str | Path | None = None,
) -> RunResult:
    """Run ``cfg.strategy.rounds`` rounds of selective distillation without Flower.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's configuration.
    data : DatasetSplits | None (default: None)
        Preloaded dataset; loaded from ``cfg.dataset.name`` when None.
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
    for round in range(1, cfg.strategy.rounds + 1):
        metrics = run_round(cfg, round, federation, server, clients)
        result.rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    if checkpoint_out is not None:
        server.save(checkpoint_out)
    result.summary = summarise(result.rounds, wall_seconds=time.perf_counter() - start)
    return result


