"""Builders of Fed-ET's parties: the server (large model, one small model per client architecture) and the clients."""

from __future__ import annotations

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import max_examples
from fl_kd.kd.fedavg.roles import WeightSharingClient
from fl_kd.kd.federation import Federation, build_client, build_server_model
from fl_kd.kd.fedet.config import FedETConfig
from fl_kd.kd.fedet.roles import FedETServer
from fl_kd.kd.fedet.server import EnsembleTransferServer
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model


def fedet_config(cfg: ExperimentConfig) -> FedETConfig:
    """The run's strategy settings, which must be Fed-ET's."""
    return settings_of(cfg, FedETConfig)


def build_server(cfg: ExperimentConfig, federation: Federation) -> EnsembleTransferServer:
    """The server model and one small model per client architecture, freshly seeded."""
    model = build_server_model(cfg, federation)
    data = federation.data
    small_models = {
        name: build_model(
            name, data.input_shape, data.num_classes, seed=derive_seed(cfg.seed, SERVER_ID, "small_model_init", name)
        )
        for name in sorted({tier.model for tier in federation.tiers})
    }
    # Only the inputs of the transfer set reach the server: its labelled part's labels are never read.
    return EnsembleTransferServer(
        model,
        small_models,
        federation.public_x,
        fedet_config(cfg),
        seed=cfg.seed,
        device=cfg.device,
        max_abs_value=cfg.max_abs_value,
    )


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedETServer:
    """The server half for the generic runtimes."""
    architectures = {client_id: tier.model for client_id, tier in enumerate(federation.tiers)}
    return FedETServer(build_server(cfg, federation), architectures, max_examples(federation))


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> WeightSharingClient:
    """Client ``client_id``'s half for the generic runtimes."""
    fedet_config(cfg)
    return WeightSharingClient(build_client(cfg, federation, client_id), cfg.max_abs_value)
