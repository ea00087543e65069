"""Builders of FedDF's parties: a prototype per client architecture and the large server model."""

from __future__ import annotations

from fl_kd.kd.algorithm import settings_of
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import global_model, max_examples
from fl_kd.kd.feddf.config import FedDFConfig
from fl_kd.kd.feddf.roles import FedDFServer
from fl_kd.kd.federation import Federation, build_server_model


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedDFServer:
    """The server: freshly seeded prototypes of the clients' architectures and the server model."""
    settings = settings_of(cfg, FedDFConfig)
    architecture_of = [tier.model for tier in federation.tiers]
    server = FedDFServer(
        {name: global_model(cfg, federation, name) for name in sorted(set(architecture_of))},
        architecture_of,
        max_examples(federation),
        build_server_model(cfg, federation),
        federation.public_x,
        settings,
        seed=cfg.seed,
        device=cfg.device,
        max_abs_value=cfg.max_abs_value,
    )
    server.use_aggregation(settings.aggregation, settings.robust_settings())
    return server
