"""Builders of FedMD's parties: the consensus server (with fl-kd's server model) and the clients."""

from __future__ import annotations

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client
from fl_kd.kd.fedmd.config import FedMDConfig
from fl_kd.kd.fedmd.public_logits import build_server_learner
from fl_kd.kd.fedmd.roles import FedMDClient, FedMDServer


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedMDServer:
    """The server half for the generic runtimes."""
    strategy = settings_of(cfg, FedMDConfig)
    model = build_server_learner(cfg, federation, strategy)
    server = FedMDServer(model, strategy, cfg.seed, strategy.public_per_round, strategy.temperature, cfg.max_abs_value)
    server.public_labels = federation.transfer_y.numpy()
    return server


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> FedMDClient:
    """Client ``client_id``'s half for the generic runtimes."""
    return FedMDClient(build_client(cfg, federation, client_id), settings_of(cfg, FedMDConfig))
