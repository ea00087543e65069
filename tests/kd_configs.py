"""The tiny selective-distillation federation the KD tests share: fast on 2 cores, still heterogeneous."""

from __future__ import annotations

from typing import Any

from fl_kd.kd.config import ReferenceConfig

TINY_PROFILE: dict[str, Any] = {
    "name": "tiny_two_tier",
    "server_model": "cnn_small",
    "tiers": {
        "low": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "high": {"model": "cnn_tiny", "share": 0.5, "local_epochs": 2, "batch_size": 32, "lr": 0.05},
    },
}


def tiny_config(**overrides: Any) -> ReferenceConfig:
    """Digits, 4 clients, a 60-sample transfer set, 2 rounds of one server epoch; ``overrides`` replace fields."""
    settings: dict[str, Any] = {
        "device_profile": TINY_PROFILE,
        "num_clients": 4,
        "transfer_size": 60,
        "personalised_test_size": 40,
        "rounds": 2,
        "server_epochs": 1,
        "server_batch_size": 32,
        "seed": 11,
    } | overrides
    return ReferenceConfig(**settings)
