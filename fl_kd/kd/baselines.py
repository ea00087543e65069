"""Baselines against which selective distillation (FedGEMS, Cheng et al., 2021, arXiv:2110.11027) is judged.

FedGEMS argues that clients gain from the server's distilled knowledge, and that sending logits costs far less
than sending weights. Both claims need a reference point built from the *same* federation:

* :func:`run_local_only`: every client trains alone. It uses the parties of :mod:`fl_kd.kd.federation` (same
  split, tiers, initial weights) and the same sampled clients, local epochs and shuffling seeds as the reference
  runner, then stops: no transfer-set query, no server, no distillation. Any gap to the runner's client accuracy
  is therefore what the exchange of knowledge adds, together with the labelled transfer set that carries it
  (distilling clients also take a cross-entropy step on its labels).
* :func:`run_transfer_only_server`: the server alone, trained round after round on the labelled transfer set
  with the same seeds and settings but no client answers. FedGEMS' server learns only on the transfer set, and
  client knowledge enters solely as soft targets on the samples it gets wrong, so the gap to this baseline is
  what the clients add to the server.
* :func:`run_pseudo_label_server`: the same server trained on the labelled transfer set plus the round's
  unlabelled subset pseudo-labelled by itself (self-training, where it is confident): what the unlabelled part is
  worth without any client, the reference for the clients' knowledge on it.
* :func:`model_weight_nbytes`: the upload of FedAvg-style weight sharing (McMahan et al., 2017), i.e. each
  client's model parameters in float32, to set against the logits it sends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fl_kd.data import DatasetSplits
from fl_kd.data.augment import shift_and_mirror
from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, build_federation, build_server_model, sample_clients
from fl_kd.kd.fedgems.options import unlabelled_subset
from fl_kd.kd.fedgems.parties import build_server, fedgems_config
from fl_kd.kd.metrics import Metrics, accuracy_summary
from fl_kd.kd.runner import evaluate_clients
from fl_kd.kd.seeding import SERVER_ID, derive_seed, seeded_torch, torch_generator
from fl_kd.kd.training import accuracy, check_loss, minibatches, predict_logits, sgd, weight_average
from fl_kd.models import build_model, count_parameters
from fl_kd.runtime import one_torch_thread

FLOAT32_NBYTES = int(np.dtype(np.float32).itemsize)
"""Bytes per parameter when weights travel as float32, the usual FedAvg wire format."""


def local_only_round(
    cfg: ExperimentConfig, round: int, federation: Federation, clients: list[DistillClient]
) -> Metrics:
    """One round of the local-only baseline on already built clients; returns its metric dict.

    The selected clients are exactly those :func:`fl_kd.kd.fedgems.parties.run_round` picks, and
    :meth:`DistillClient.local_train` seeds its shuffling by ``(seed, client_id, round)``, so round 1 ends with
    the very models the distillation run has before its first query: the two runs part only where knowledge
    starts to move.

    Returns
    -------
    dict[str, float | int]
        ``round``, ``client_acc_*`` and ``client_pacc_*`` (see :func:`fl_kd.kd.metrics.accuracy_summary`),
        ``uplink_bytes`` and ``downlink_bytes`` (both 0: nothing is sent) and ``wall_seconds``.
    """
    start = time.perf_counter()
    for client_id in sample_clients(federation.num_clients, cfg.strategy.fraction_fit, cfg.seed, round):
        clients[client_id].local_train(round)
    tiers = federation.tier_names()
    evaluated = [clients[cid] for cid in federation.evaluated_clients(cfg, round)]
    client_acc, client_pacc = evaluate_clients(federation, evaluated, federation.test_set(cfg, round))
    metrics: Metrics = {"round": int(round)}
    metrics |= accuracy_summary(client_acc, tiers, "client_acc")
    metrics |= accuracy_summary(client_pacc, tiers, "client_pacc")
    metrics |= {"uplink_bytes": 0, "downlink_bytes": 0, "wall_seconds": time.perf_counter() - start}
    return metrics


@one_torch_thread()
def run_local_only(
    cfg: ExperimentConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
) -> list[Metrics]:
    """Run ``cfg.strategy.rounds`` rounds in which each sampled client only trains on its private data.

    Parameters
    ----------
    cfg : ExperimentConfig
        The same config as the distillation run it is compared with; the server, transfer-set and
        distillation settings are simply not used.
    data : DatasetSplits | None (default: None)
        Preloaded dataset; loaded from ``cfg.dataset.name`` when None.
    on_round : Callable[[dict], None] | None (default: None)
        Called with each round's metrics as soon as they exist (progress logging).

    Returns
    -------
    list[dict[str, float | int]]
        One metric dict per round (see :func:`local_only_round`); apart from ``wall_seconds``, the same config
        gives the same numbers.
    """
    federation = build_federation(cfg, data)
    clients = [build_client(cfg, federation, client_id) for client_id in range(federation.num_clients)]
    rounds: list[Metrics] = []
    for round in range(1, cfg.strategy.rounds + 1):
        metrics = local_only_round(cfg, round, federation, clients)
        rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    return rounds


@one_torch_thread()
def run_transfer_only_server(
    cfg: ExperimentConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
) -> list[Metrics]:
    """Run ``cfg.strategy.rounds`` server distillation phases in which no client answers.

    The server is built exactly as in the reference runner (same model, initial weights, transfer set and
    per-round shuffling seeds); with no client logits, a sample it gets wrong is learnt from its knowledge cache
    if it once got it right, else from the label alone. ``strategy.checkpoint`` is honoured like in the runner.

    Parameters
    ----------
    cfg : ExperimentConfig
        The same config as the distillation run it is compared with; client settings are not used.
    data : DatasetSplits | None (default: None)
        Preloaded dataset; loaded from ``cfg.dataset.name`` when None.
    on_round : Callable[[dict], None] | None (default: None)
        Called with each round's metrics as soon as they exist (progress logging).

    Returns
    -------
    list[dict[str, float | int]]
        Per round: ``round, server_acc, server_loss, n_self, n_cache, n_clients`` (always 0) ``, n_ce_only,
        cache_size, uplink_bytes, downlink_bytes`` (both 0) ``, wall_seconds``; the last round adds
        ``server_acc_subset`` where the rounds before it were scored on a test subset.
    """
    federation = build_federation(cfg, data)
    server = build_server(cfg, federation)
    rounds: list[Metrics] = []
    for round in range(1, cfg.strategy.rounds + 1):
        start = time.perf_counter()
        stats = server.distill(round, {})
        metrics: Metrics = {
            "round": int(round),
            "server_acc": server.evaluate(*federation.test_set(cfg, round)),
            "server_loss": float(stats.loss),
            "n_self": stats.n_self,
            "n_cache": stats.n_cache,
            "n_clients": stats.n_clients,
            "n_ce_only": stats.n_ce_only,
            "cache_size": stats.cache_size,
            "uplink_bytes": 0,
            "downlink_bytes": 0,
            "wall_seconds": time.perf_counter() - start,
        }
        if (trend := federation.trend_test_set(cfg, round)) is not None:  # the last round on the subset too
            metrics["server_acc_subset"] = server.evaluate(*trend)
        rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    return rounds


@one_torch_thread()
def run_pseudo_label_server(
    cfg: ExperimentConfig,
    data: DatasetSplits | None = None,
    on_round: Callable[[Metrics], None] | None = None,
    threshold: float = 0.9,
) -> list[Metrics]:
    """Run ``cfg.strategy.rounds`` rounds of self-training of the server model, no client involved.

    Each round the server labels the round's unlabelled subset (``strategy.unlabelled_per_round``, drawn as in
    FedGEMS) with its own predictions, keeps those whose softmax confidence reaches ``threshold``, and trains
    ``server_epochs`` of cross-entropy on them together with the labelled transfer set, with FedGEMS' server
    settings (``server_ema`` included: it then labels and is evaluated with the average of its weights; and its
    augmentation, ``server_augment_shift`` and ``server_augment_mirror``). The true
    labels of the unlabelled part are read only to report ``pseudo_label_accuracy``.

    Returns
    -------
    list[dict[str, float | int]]
        Per round: ``round, server_acc, server_loss, n_pseudo, pseudo_label_accuracy`` (NaN where none is kept)
        ``, uplink_bytes, downlink_bytes`` (both 0) ``, wall_seconds``; the last round adds ``server_acc_subset``
        where the rounds before it were scored on a test subset.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    federation = build_federation(cfg, data)
    settings = fedgems_config(cfg)
    server_cfg = settings.server_config()
    model = build_server_model(cfg, federation)
    ema = weight_average(model, server_cfg.ema_decay)
    published = ema.module if ema is not None else model
    labelled_x, labelled_y = federation.transfer_x, federation.transfer_y
    unlabelled_idx = federation.unlabelled_idx
    rounds: list[Metrics] = []
    for round in range(1, cfg.strategy.rounds + 1):
        start = time.perf_counter()
        subset = unlabelled_subset(unlabelled_idx.size, settings.unlabelled_per_round, cfg.seed, round)
        picked = torch.from_numpy(unlabelled_idx[subset])
        u_x, u_y = federation.data.x_train[picked], federation.data.y_train[picked]
        keep, pseudo = _pseudo_labels(published, u_x, threshold)
        x, y = torch.cat([labelled_x, u_x[keep]]), torch.cat([labelled_y, pseudo[keep]])
        generator = torch_generator(derive_seed(cfg.seed, SERVER_ID, round, "pseudo_label_shuffle"))
        views = torch_generator(derive_seed(cfg.seed, SERVER_ID, round, "server_augment"))
        optimizer = sgd(model, server_cfg.lr, server_cfg.momentum, server_cfg.weight_decay)
        model.train()
        loss_sum = 0.0
        with seeded_torch(derive_seed(cfg.seed, SERVER_ID, round, "pseudo_label_rng"), cfg.device):
            for _ in range(server_cfg.epochs):
                loss_sum = 0.0
                for index in minibatches(int(x.shape[0]), server_cfg.batch_size, generator):
                    batch = shift_and_mirror(
                        x[index].to(cfg.device), server_cfg.augment_shift, server_cfg.augment_mirror, views
                    )
                    loss = F.cross_entropy(model(batch), y[index].to(cfg.device))
                    check_loss(loss, "the server model", "strategy.server_lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    loss_sum += float(loss.detach()) * index.numel()
        test_x, test_y = federation.test_set(cfg, round)
        metrics: Metrics = {
            "round": int(round),
            "server_acc": accuracy(published, test_x, test_y),
            "server_loss": loss_sum / int(x.shape[0]),
            "n_pseudo": int(keep.sum()),
            # none kept: no accuracy to tell (it read 0.0 as if every kept label were wrong)
            "pseudo_label_accuracy": float((pseudo[keep] == u_y[keep]).double().mean()) if keep.any() else math.nan,
            "uplink_bytes": 0,
            "downlink_bytes": 0,
            "wall_seconds": time.perf_counter() - start,
        }
        if (trend := federation.trend_test_set(cfg, round)) is not None:  # the last round on the subset too
            metrics["server_acc_subset"] = accuracy(published, *trend)
        rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    return rounds


def _pseudo_labels(model: torch.nn.Module, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, labels)``: the model's own predictions on ``x`` and where its confidence reaches ``threshold``."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    confidence, labels = torch.softmax(predict_logits(model, x), dim=1).max(dim=1)
    return confidence >= threshold, labels


def model_weight_nbytes(cfg: ExperimentConfig, federation: Federation) -> dict[int, int]:
    """Per client, the float32 bytes of its model's parameters: its upload per round under weight sharing.

    Only parameters count. The image models normalise with GroupNorm and the MLPs not at all, so no model in the
    zoo has buffers (running statistics) that FedAvg would also have to send.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's configuration; must describe ``federation`` (same number of clients).
    federation : Federation
        Gives each client's device tier and the data's input shape and number of classes.

    Returns
    -------
    dict[int, int]
        Client id -> ``4 * number of parameters`` of its tier's model.

    Raises
    ------
    ValueError
        If ``cfg`` and ``federation`` disagree on the number of clients.
    """
    if cfg.num_clients != federation.num_clients:
        raise ValueError(
            f"config has {cfg.num_clients} clients but the federation has {federation.num_clients}; "
            "build the federation from this config"
        )
    data = federation.data
    nbytes_by_model: dict[str, int] = {}
    for tier in federation.tiers:
        if tier.model not in nbytes_by_model:
            # The count does not depend on the weights; a fixed seed keeps torch's global generator untouched.
            model = build_model(tier.model, data.input_shape, data.num_classes, seed=0)
            nbytes_by_model[tier.model] = FLOAT32_NBYTES * count_parameters(model)
    return {client_id: nbytes_by_model[tier.model] for client_id, tier in enumerate(federation.tiers)}
