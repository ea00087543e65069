"""Schema of the composed Hydra config, so a misspelt key or a wrong type is an error, not silently ignored.

Hydra already refuses command-line overrides of keys that do not exist; the schema below also catches mistakes
inside YAML files (a new group option with a typo) and wrong value types, by merging the composed config into
structured dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fl_kd.models import DeviceProfile


class ConfigError(ValueError):
    """The composed config does not match the schema."""


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False


@dataclass
class PartitionConfig:
    name: str = "dirichlet"
    min_size: int = 10
    alpha: float | None = None
    classes_per_client: int | None = None


@dataclass
class TierConfig:
    model: str = "cnn_small"
    share: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    compute_speed: float | None = None
    bandwidth_mbps: float | None = None


@dataclass
class DeviceProfileConfig:
    name: str = "homogeneous"
    server_model: str = "resnet_server"
    tiers: dict[str, TierConfig] = field(default_factory=dict)


@dataclass
class StrategyConfig:
    name: str = "fedgems"
    rounds: int = 5
    fraction_fit: float = 1.0
    epsilon: float = 0.75
    temperature: float = 1.0
    weighting: str = "inverse_entropy"
    server_epochs: int = 4
    server_batch_size: int = 64
    server_lr: float = 0.05
    client_distill_epochs: int = 1
    logits_dtype: str = "float32"
    checkpoint: str | None = None


@dataclass
class SimulationConfig:
    backend: str = "flwr_run"
    num_cpus_per_client: int = 1
    num_cpus: int = 2


@dataclass
class Config:
    seed: int = 0
    num_clients: int = 10
    transfer_size: int = 300
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    device_profile: DeviceProfileConfig = field(default_factory=DeviceProfileConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)


_CHOICES = {
    "strategy.name": ("fedgems",),
    "strategy.weighting": ("inverse_entropy", "aijack_softmax"),
    "strategy.logits_dtype": ("float32", "float16"),
    "simulation.backend": ("flwr_run", "inprocess"),
    "partition.name": ("iid", "dirichlet", "pathological", "quantity_skew"),
}


def merge_into_schema(schema: type, cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """``cfg`` merged into the structured ``schema``; unknown keys and wrong types raise :class:`ConfigError`.

    The ``hydra`` node is dropped first: it belongs to the launcher, not to the experiment.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config: {err}") from err
    assert isinstance(merged, DictConfig)
    return merged


def validate_config(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """Return ``cfg`` merged into the schema; raise :class:`ConfigError` on unknown keys, types or values."""
    merged = merge_into_schema(Config, cfg)
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(merged, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if not 0.0 < merged.strategy.fraction_fit <= 1.0:
        raise ConfigError(f"strategy.fraction_fit must be in (0, 1], got {merged.strategy.fraction_fit}")
    if not 0.0 <= merged.strategy.epsilon <= 1.0:
        raise ConfigError(f"strategy.epsilon must be in [0, 1], got {merged.strategy.epsilon}")
    if merged.strategy.temperature <= 0:
        raise ConfigError(f"strategy.temperature must be positive, got {merged.strategy.temperature}")
    if merged.strategy.rounds < 1:
        raise ConfigError(f"strategy.rounds must be >= 1, got {merged.strategy.rounds}")
    if merged.num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {merged.num_clients}")
    if merged.transfer_size < 0:
        raise ConfigError(f"transfer_size must be >= 0, got {merged.transfer_size}")
    # The device profile checks its own shares, model names and budgets.
    try:
        device_profile(merged)
    except ValueError as err:
        raise ConfigError(f"device_profile: {err}") from err
    return merged


def device_profile(cfg: DictConfig) -> DeviceProfile:
    """Build the core :class:`DeviceProfile` from the validated config."""
    container = OmegaConf.to_container(cfg.device_profile, resolve=True)
    assert isinstance(container, dict)
    return DeviceProfile.from_dict(container)


def partition_params(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments of the chosen partitioner (only those its config sets)."""
    params = {"alpha": cfg.partition.alpha, "classes_per_client": cfg.partition.classes_per_client}
    return {key: value for key, value in params.items() if value is not None}
