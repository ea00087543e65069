"""Builders of DS-FL's parties: the aggregating server (with fl-kd's server model) and the clients."""

from __future__ import annotations

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.dsfl.config import DSFLConfig
from fl_kd.kd.dsfl.roles import DSFLClient, DSFLServer
from fl_kd.kd.federation import Federation, build_client
from fl_kd.kd.fedmd.public_logits import build_server_learner


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> DSFLServer:
    """The server half for the generic runtimes."""
    strategy = settings_of(cfg, DSFLConfig)
    server = DSFLServer(build_server_learner(cfg, federation, strategy), strategy, cfg.seed, cfg.max_abs_value)
    server.public_labels = federation.transfer_y.numpy()
    return server


def build_client_role(cfg: ExperimentConfig, federation: Federation, client_id: int) -> DSFLClient:
    """Client ``client_id``'s half for the generic runtimes."""
    return DSFLClient(build_client(cfg, federation, client_id), settings_of(cfg, DSFLConfig))
