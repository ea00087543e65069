"""The tiny selective-distillation federation the KD tests share: fast on 2 cores, still heterogeneous."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from fl_kd.checkpoint import object_state, restore_object_state, state_digests
from fl_kd.config import from_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedgems import FedGEMSConfig, SelectiveDistillServer, ServerDistillConfig
from fl_kd.models import build_model

TINY_PROFILE: dict[str, Any] = {
    "name": "tiny_two_tier",
    "server_model": "cnn_small",
    "tiers": {
        "low": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "high": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 2, "batch_size": 32, "lr": 0.05},
    },
}

_STRATEGY_KEYS = {f.name for f in fields(FedGEMSConfig)}


def tiny_config(**overrides: Any) -> ExperimentConfig:
    """Digits, 4 clients, a 60-sample transfer set, 2 rounds of one server epoch.

    ``overrides`` replace settings by name: top-level fields (``seed``, ``num_clients``, a whole group such as
    ``partition={...}``) or, for brevity, fields of the strategy (``rounds``, ``weighting``, ...).
    """
    top: dict[str, Any] = {
        "device_profile": TINY_PROFILE,
        "num_clients": 4,
        "transfer": {"labelled": 60},
        "personalised_test_size": 40,
        "seed": 11,
    }
    strategy: dict[str, Any] = {"rounds": 2, "server_epochs": 1, "server_batch_size": 32}
    for key, value in overrides.items():
        (strategy if key in _STRATEGY_KEYS else top)[key] = value
    return from_mapping(ExperimentConfig, top | {"strategy": strategy})


def learned_trust_server(num_unlabelled: int, **settings: Any) -> SelectiveDistillServer:
    """A FedGEMS server on random 8x8 inputs of 4 classes (40 labelled, half held out, ``num_unlabelled`` unlabelled)
    with ``unlabelled_trust="learned"``; ``settings`` add to or replace fields of its :class:`ServerDistillConfig`."""
    shape, classes = (1, 8, 8), 4
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, *shape, generator=generator), torch.randint(0, classes, (40,), generator=generator)
    u_x = torch.rand(num_unlabelled, *shape, generator=generator)
    u_y = torch.randint(0, classes, (num_unlabelled,), generator=generator)
    defaults: dict[str, Any] = {
        "epochs": 1, "batch_size": 8, "correctness": "held_out", "held_out_fraction": 0.5,
        "unlabelled_trust": "learned", "reliability_on": "held_out",
    }  # fmt: skip
    config = ServerDistillConfig(**(defaults | settings))
    model = build_model("cnn_small", shape, classes, seed=0)
    return SelectiveDistillServer(model, x, y, config, seed=3, unlabelled_x=u_x, unlabelled_y=u_y)


def resumed_from_checkpoint(
    server: SelectiveDistillServer, build: Callable[[], SelectiveDistillServer]
) -> SelectiveDistillServer:
    """A fresh server from ``build`` restored from ``server``'s saved object state, as a resumed run would be."""
    buffer = io.BytesIO()
    torch.save(object_state(server, state_digests(build())), buffer)
    buffer.seek(0)
    resumed = build()
    restore_object_state(resumed, torch.load(buffer, weights_only=False), "memory")
    return resumed
