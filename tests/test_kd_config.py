"""The experiment config survives its trip through Flower's run config unchanged."""

import pytest

from fl_kd.kd.config import ReferenceConfig

PROFILE = {
    "name": "two",
    "server_model": "cnn_small",
    "tiers": {
        "zeta": {"model": "cnn_tiny", "share": 0.25, "local_epochs": 1},
        "alpha": {"model": "cnn_small", "share": 0.75, "local_epochs": 2},
    },
}


def test_json_round_trip_keeps_every_field_and_the_tier_order() -> None:
    config = ReferenceConfig(device_profile=PROFILE, num_clients=6, partition_params={"alpha": 0.3}, seed=3)
    restored = ReferenceConfig.from_json(config.to_json())
    assert restored == config
    assert [tier.name for tier in restored.device_profile.tiers] == ["zeta", "alpha"]


def test_unknown_keys_are_an_error() -> None:
    text = ReferenceConfig(device_profile=PROFILE).to_json().replace('"rounds"', '"roundz"')
    with pytest.raises(ValueError, match="roundz"):
        ReferenceConfig.from_json(text)
