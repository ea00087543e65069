"""Builders of FedGEMS' parties: the server (model, transfer set, optional checkpoint) and its role objects."""

from __future__ import annotations

from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, prepare_device
from fl_kd.kd.fedgems.config import FedGEMSConfig
from fl_kd.kd.fedgems.roles import FedGEMSClient, FedGEMSServer
from fl_kd.kd.fedgems.server import SelectiveDistillServer
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model


def fedgems_config(cfg: ExperimentConfig) -> FedGEMSConfig:
    """The run's strategy settings, which must be FedGEMS's."""
    if not isinstance(cfg.strategy, FedGEMSConfig):
        raise TypeError(f"strategy {cfg.strategy.name!r} is not FedGEMS-like selective distillation")
    return cfg.strategy


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


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedGEMSServer:
    """The server half for the generic runtimes."""
    return FedGEMSServer(build_server(cfg, federation), fedgems_config(cfg).logits_dtype)


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> FedGEMSClient:
    """Client ``client_id``'s half for the generic runtimes."""
    return FedGEMSClient(build_client(cfg, federation, client_id))
