"""Builders of FedAvg's parties, and the pieces every weight-sharing peer builds its parties from."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from torch import nn

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg.config import WeightSharingConfig
from fl_kd.kd.fedavg.roles import FedAvgServer, WeightSharingClient
from fl_kd.kd.fedavg.root import FLTRUST, root_update
from fl_kd.kd.federation import Federation, build_client, prepare_device
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model

Server = TypeVar("Server", bound=FedAvgServer)


def weight_sharing_config(cfg: ExperimentConfig) -> WeightSharingConfig:
    """The run's strategy settings, which must be a weight-sharing strategy's."""
    return settings_of(cfg, WeightSharingConfig)


def global_model(cfg: ExperimentConfig, federation: Federation, architecture: str) -> nn.Module:
    """The server's freshly seeded global model of ``architecture`` (seeded by ``(seed, SERVER_ID, arch)``)."""
    data = federation.data
    seed = derive_seed(cfg.seed, SERVER_ID, "model_init", architecture)
    return build_model(architecture, data.input_shape, data.num_classes, seed=seed)


def max_examples(federation: Federation) -> int:
    """The largest sample count a client may claim: the size of the training split."""
    return int(federation.data.y_train.shape[0])


def weight_sharing_client(
    cfg: ExperimentConfig, federation: Federation, client_id: int, model: str | None = None
) -> WeightSharingClient:
    """Client ``client_id``'s half; it trains ``model`` (its tier's when None) with its tier's settings.

    Another model than the tier's is built and seeded exactly as :func:`fl_kd.kd.federation.build_client` builds the
    tier's, by ``(seed, client_id, "model_init")``: the client is built in a federation whose tiers train ``model``.
    """
    weight_sharing_config(cfg)
    if model is not None:
        federation = dataclasses.replace(
            federation, tiers=[dataclasses.replace(tier, model=model) for tier in federation.tiers]
        )
    return WeightSharingClient(build_client(cfg, federation, client_id), cfg.max_abs_value)


def fedavg_server(
    cfg: ExperimentConfig, federation: Federation, architecture: str, server_class: type[Server]
) -> Server:
    """A FedAvg server (``server_class``) whose every client trains ``architecture``, freshly seeded."""
    prepare_device(cfg)
    settings = weight_sharing_config(cfg)
    server = server_class(
        global_model(cfg, federation, architecture),
        architecture,
        federation.num_clients,
        max_examples(federation),
        device=cfg.device,
        max_abs_value=cfg.max_abs_value,
    )
    root = root_update(cfg, federation, architecture) if settings.aggregation == FLTRUST else None
    server.use_aggregation(settings.aggregation, settings.robust_settings(), root)
    return server


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedAvgServer:
    """FedAvg's server: the global model of the one client architecture."""
    architectures = sorted({tier.model for tier in federation.tiers})
    if len(architectures) != 1:
        raise ValueError(f"FedAvg needs one client architecture, got {architectures}")
    return fedavg_server(cfg, federation, architectures[0], FedAvgServer)


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> WeightSharingClient:
    """Client ``client_id``'s half: its tier's model and settings."""
    return weight_sharing_client(cfg, federation, client_id)
