"""Builders of Fed-ET's parties: the server (large model, one small model per client architecture) and the clients."""

from __future__ import annotations

from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, prepare_device
from fl_kd.kd.fedet.config import FedETConfig
from fl_kd.kd.fedet.roles import FedETClient, FedETServer
from fl_kd.kd.fedet.server import EnsembleTransferServer
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model


def fedet_config(cfg: ExperimentConfig) -> FedETConfig:
    """The run's strategy settings, which must be Fed-ET's."""
    if not isinstance(cfg.strategy, FedETConfig):
        raise TypeError(f"strategy {cfg.strategy.name!r} is not Fed-ET")
    return cfg.strategy


def build_server(cfg: ExperimentConfig, federation: Federation) -> EnsembleTransferServer:
    """The server model and one small model per client architecture, freshly seeded."""
    prepare_device(cfg)
    data = federation.data
    model = build_model(
        cfg.device_profile.server_model,
        data.input_shape,
        data.num_classes,
        seed=derive_seed(cfg.seed, SERVER_ID, "model_init"),
    )
    small_models = {
        name: build_model(
            name, data.input_shape, data.num_classes, seed=derive_seed(cfg.seed, SERVER_ID, "small_model_init", name)
        )
        for name in sorted({tier.model for tier in federation.tiers})
    }
    # Only the inputs of the transfer set reach the server: its labelled part's labels are never read.
    return EnsembleTransferServer(
        model, small_models, federation.public_x, fedet_config(cfg), seed=cfg.seed, device=cfg.device
    )


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedETServer:
    """The server half for the generic runtimes."""
    architectures = {client_id: tier.model for client_id, tier in enumerate(federation.tiers)}
    return FedETServer(build_server(cfg, federation), architectures)


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> FedETClient:
    """Client ``client_id``'s half for the generic runtimes."""
    fedet_config(cfg)
    return FedETClient(build_client(cfg, federation, client_id))
