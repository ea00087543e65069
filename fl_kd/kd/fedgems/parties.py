"""Builders of FedGEMS' parties: the server (model, transfer set, optional checkpoint) and its role objects."""

from __future__ import annotations

import torch

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, build_server_model
from fl_kd.kd.fedgems.config import FedGEMSConfig
from fl_kd.kd.fedgems.roles import FedGEMSClient, FedGEMSServer
from fl_kd.kd.fedgems.server import SelectiveDistillServer


def fedgems_config(cfg: ExperimentConfig) -> FedGEMSConfig:
    """The run's strategy settings, which must be FedGEMS's."""
    return settings_of(cfg, FedGEMSConfig)


def build_server(cfg: ExperimentConfig, federation: Federation) -> SelectiveDistillServer:
    """The server with its freshly seeded model, restored from ``strategy.checkpoint`` when one is given."""
    strategy = fedgems_config(cfg)
    model = build_server_model(cfg, federation)
    server = SelectiveDistillServer(
        model,
        federation.transfer_x,
        federation.transfer_y,
        strategy.server_config(),
        seed=cfg.seed,
        device=cfg.device,
        unlabelled_x=federation.public_x[federation.num_labelled :] if strategy.unlabelled_trust != "none" else None,
        # Read for the canaries (the server's own secret labels, strategy.canaries) and, in simulation, for two
        # diagnostic figures (the teacher's accuracy); never trained on.
        unlabelled_y=federation.data.y_train[torch.from_numpy(federation.unlabelled_idx)],
    )
    if strategy.checkpoint is not None:
        server.load(strategy.checkpoint)
    return server


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedGEMSServer:
    """The server half for the generic runtimes."""
    strategy = fedgems_config(cfg)
    return FedGEMSServer(
        build_server(cfg, federation), strategy.logits_dtype, strategy.client_unlabelled, cfg.max_abs_value
    )


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> FedGEMSClient:
    """Client ``client_id``'s half for the generic runtimes."""
    strategy = fedgems_config(cfg)
    return FedGEMSClient(
        build_client(cfg, federation, client_id),
        strategy.client_finetune_epochs,
        strategy.client_personal,
        strategy.client_personal_prox,
        strategy.client_personal_prior,
        strategy.client_tail_average,
        strategy.client_keep_distilled,
        strategy.client_anchor,
    )
