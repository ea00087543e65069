"""The ``fl-kd-sim`` config: Hydra groups derived from the core's :class:`~fl_kd.kd.config.ExperimentConfig`.

Importing this module stores one schema node per group from the core dataclasses' defaults (see
:mod:`fl_kd.simulations.schema`), so ``conf/`` files set only what differs; :func:`experiment_config` turns the
composed config back into the core class, where every key, type and value is checked once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from omegaconf import DictConfig

from fl_kd.config import ConfigError, to_mapping
from fl_kd.kd.adversary import ADVERSARIES, AdversaryConfig
from fl_kd.kd.algorithm import StrategyConfig, available_strategies, get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedgems.extensions import PLUS, fedgems_plus
from fl_kd.models.presets import DEVICE_PROFILES
from fl_kd.partition.config import PartitionConfig
from fl_kd.simulations.schema import store_schema, store_shared_schemas, to_core

__all__ = ["GROUPS", "STRATEGY_PRESETS", "ConfigError", "experiment_config", "register_schemas"]

#: Fields of :class:`ExperimentConfig` that are Hydra config groups of their own.
GROUPS = ("dataset", "partition", "device_profile", "strategy", "simulation")

#: Options of the ``strategy`` group that are a registered algorithm with other settings than its defaults
#: (``strategy=fedgems_plus``: FedGEMS with every fl-kd extension); the settings are declared in the core.
STRATEGY_PRESETS: dict[str, Callable[[], StrategyConfig]] = {PLUS: fedgems_plus}

#: Further groups, one schema node per registered name (``/schema/adversary/<name>``).
ADVERSARY_GROUP = "adversary"


def register_schemas() -> None:
    """Store the schema nodes ``conf/`` extends: top-level settings, dataset, partition, simulation, device profiles,
    strategies, adversaries."""
    top: dict[str, Any] = {}
    for f in fields(ExperimentConfig):
        if f.name in GROUPS or f.name == ADVERSARY_GROUP:
            continue
        if f.default is not MISSING:
            top[f.name] = f.default
        elif f.default_factory is not MISSING:
            top[f.name] = to_mapping(f.default_factory())
    store_schema("experiment", top)
    store_shared_schemas()
    store_schema("partition", PartitionConfig())
    for name, profile in DEVICE_PROFILES.items():
        store_schema("device_profile", profile, name=name)
    for name in available_strategies():
        store_schema("strategy", get_algorithm(name).config_class(name=name), name=name)
    for name, preset in STRATEGY_PRESETS.items():
        store_schema("strategy", preset(), name=name)
    for name in ADVERSARIES.names():
        store_schema(ADVERSARY_GROUP, AdversaryConfig.defaults(name), name=name)


def experiment_config(cfg: DictConfig | dict[str, Any]) -> ExperimentConfig:
    """The core config of a composed ``fl-kd-sim`` config; any mistake raises ``ConfigError`` naming the key."""
    return to_core(ExperimentConfig, cfg)


register_schemas()
