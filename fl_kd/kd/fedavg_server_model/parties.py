"""Builders of FedAvg-of-the-server-model's parties: every client and the server hold the server model."""

from __future__ import annotations

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import WeightSharingClient, fedavg_server, weight_sharing_client
from fl_kd.kd.fedavg_server_model.config import FedAvgServerModelConfig
from fl_kd.kd.fedavg_server_model.roles import ServerModelFedAvgServer
from fl_kd.kd.federation import Federation


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> ServerModelFedAvgServer:
    """The server: the global server model, freshly seeded."""
    settings_of(cfg, FedAvgServerModelConfig)
    return fedavg_server(cfg, federation, cfg.device_profile.server_model, ServerModelFedAvgServer)


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> WeightSharingClient:
    """Client ``client_id``'s half: the server model, trained with its tier's settings."""
    return weight_sharing_client(cfg, federation, client_id, cfg.device_profile.server_model)
