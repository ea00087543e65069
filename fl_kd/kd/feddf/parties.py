"""Builders of FedDF's parties: a prototype per client architecture and the large server model."""

from __future__ import annotations

from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import global_model, max_examples
from fl_kd.kd.feddf.config import FedDFConfig
from fl_kd.kd.feddf.roles import FedDFServer
from fl_kd.kd.federation import Federation, prepare_device
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.models import build_model


def build_server_role(cfg: ExperimentConfig, federation: Federation) -> FedDFServer:
    """The server: freshly seeded prototypes of the clients' architectures and the server model."""
    if not isinstance(cfg.strategy, FedDFConfig):
        raise TypeError(f"strategy {cfg.strategy.name!r} is not feddf")
    prepare_device(cfg)
    data = federation.data
    architecture_of = [tier.model for tier in federation.tiers]
    server_model = build_model(
        cfg.device_profile.server_model,
        data.input_shape,
        data.num_classes,
        seed=derive_seed(cfg.seed, SERVER_ID, "model_init"),
    )
    return FedDFServer(
        {name: global_model(cfg, federation, name) for name in sorted(set(architecture_of))},
        architecture_of,
        max_examples(federation),
        server_model,
        federation.public_x,
        cfg.strategy,
        seed=cfg.seed,
        device=cfg.device,
    )
