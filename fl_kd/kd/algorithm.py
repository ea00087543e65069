"""The strategy registry: ``strategy=<name>`` picks an algorithm's config class, ServerApp and ClientApp.

An algorithm is one folder of :mod:`fl_kd.kd` (``fl_kd/kd/fedgems/``) that registers an :class:`Algorithm`. The
core names the Flower apps by import reference (``"module:attribute"``, the form Flower's own app config uses),
so it stays free of Flower while the launchers, the deployment and the Hydra groups all read one table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fl_kd.config import ConfigError, build_dataclass, check_range
from fl_kd.registry import Registry

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig
    from fl_kd.kd.runner import RunResult


@dataclass
class StrategyConfig:
    """Settings every KD strategy has; an algorithm's config class adds its own.

    Attributes
    ----------
    name : str (default: "fedgems")
        Registered strategy name (see :data:`STRATEGIES`).
    rounds : int (default: 5)
        Federated rounds.
    fraction_fit : float (default: 1.0)
        Share of clients selected each round, in (0, 1].
    """

    name: str = "fedgems"
    rounds: int = 5
    fraction_fit: float = 1.0

    def __post_init__(self) -> None:
        check_range("strategy.rounds", self.rounds, low=1)
        check_range("strategy.fraction_fit", self.fraction_fit, low=0.0, high=1.0, low_open=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], key: str = "strategy") -> StrategyConfig:
        """The registered config class of ``values["name"]``, built strictly from ``values``."""
        if cls is not StrategyConfig:
            return build_dataclass(cls, values, key)
        if not isinstance(values, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(values).__name__}")
        name = values.get("name", StrategyConfig.name)
        try:
            algorithm = get_algorithm(str(name))
        except ValueError as err:
            raise ConfigError(f"{key}.name: {err}") from err
        return build_dataclass(algorithm.config_class, values, key)


@dataclass(frozen=True)
class Algorithm:
    """One registered KD algorithm.

    Attributes
    ----------
    name : str
        Its ``strategy=<name>``.
    config_class : type[StrategyConfig]
        Its settings (the Hydra schema of ``conf/strategy/<name>.yaml`` is derived from it).
    server_app, client_app : str
        Import references of its Flower ServerApp and ClientApp.
    run_inprocess : Callable
        The reference runner: ``run_inprocess(config, on_round=None, checkpoint_out=None) -> RunResult``; the
        Flower apps must reproduce its metrics bit for bit.
    preflight : Callable | None (default: None)
        ``preflight(config)`` builds what the ServerApp would build (data, server model, checkpoint) in the
        launching process, so a missing dataset or a bad checkpoint is one clear error before Flower starts.
    """

    name: str
    config_class: type[StrategyConfig]
    server_app: str
    client_app: str
    run_inprocess: Callable[..., RunResult]
    preflight: Callable[[ExperimentConfig], None] | None = None


STRATEGIES: Registry[Algorithm] = Registry("strategy")

#: Packages that register the built-in algorithms when imported.
_BUILTIN = ("fl_kd.kd.fedgems",)


def _load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called ``name``."""
    _load_builtin()
    return STRATEGIES.get(name)


def available_strategies() -> tuple[str, ...]:
    """Names of every registered algorithm."""
    _load_builtin()
    return STRATEGIES.names()


def run_inprocess(config: ExperimentConfig, **kwargs: Any) -> RunResult:
    """Run ``config`` with its algorithm's reference runner (no Flower)."""
    return get_algorithm(config.strategy.name).run_inprocess(config, **kwargs)
