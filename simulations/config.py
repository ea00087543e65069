"""The ``fl-kd-sim`` config: Hydra groups derived from the core's :class:`~fl_kd.kd.config.ExperimentConfig`.

Importing this module stores one schema node per group from the core dataclasses' defaults (see
:mod:`fl_kd.simulations.schema`), so ``conf/`` files set only what differs; :func:`experiment_config` turns the
composed config back into the core class, where every key, type and value is checked once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fl_kd.config import ConfigError, to_mapping
from fl_kd.kd.adversary import ADVERSARIES, AdversaryConfig
from fl_kd.kd.algorithm import StrategyConfig, available_strategies, get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedgems.extensions import PLUS, SCREENED, fedgems_plus, fedgems_plus_screened
from fl_kd.models.presets import DEVICE_PROFILES
from fl_kd.partition.config import PartitionConfig
from fl_kd.simulations.schema import store_schema, store_shared_schemas, to_core

__all__ = ["GROUPS", "STRATEGY_PRESETS", "ConfigError", "experiment_config", "register_schemas"]

#: Fields of :class:`ExperimentConfig` that are Hydra config groups of their own.
GROUPS = ("dataset", "partition", "device_profile", "strategy", "simulation")

#: Options of the ``strategy`` group that are a registered algorithm with other settings than its defaults
#: (``strategy=fedgems_plus``: FedGEMS with every fl-kd extension; ``strategy=fedgems_plus_screened``: the same behind
#: the consensus screen); the settings are declared in the core.
STRATEGY_PRESETS: dict[str, Callable[[], StrategyConfig]] = {PLUS: fedgems_plus, SCREENED: fedgems_plus_screened}

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
    check_adversary_choice(cfg)
    return to_core(ExperimentConfig, cfg)


def check_adversary_choice(cfg: DictConfig | dict[str, Any]) -> None:
    """A behaviour is chosen as a group option (``adversary=label_flip``), which starts it from its own defaults
    (:meth:`AdversaryConfig.defaults`): ``adversary.name=label_flip`` kept the option's (``none``: no attacker at all,
    ``sign_flip``'s scale 10 where ``adversary=sign_flip`` has 1), so the two spellings ran two different attacks."""
    if not HydraConfig.initialized():  # composed by hand (tests, the benchmarks): nothing was spelt on a command line
        return
    chosen = HydraConfig.get().runtime.choices.get(ADVERSARY_GROUP)
    name = (cfg.get(ADVERSARY_GROUP) or {}).get("name")
    if chosen is not None and name is not None and name != chosen:
        raise ConfigError(
            f"adversary.name={name} beside adversary={chosen}: choose the behaviour as adversary={name}, which "
            "starts it from its own settings (adversary.name keeps those of the option it renames)"
        )


register_schemas()
