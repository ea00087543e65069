"""The strategy registry: ``strategy=<name>`` picks an algorithm's config class, ServerApp and ClientApp.

An algorithm is one folder of :mod:`fl_kd.kd` (``fl_kd/kd/fedgems/``) whose ``__init__`` registers an
:class:`Algorithm`; every such folder is found and imported the first time the registry is read. The
core names the Flower apps by import reference (``"module:attribute"``, the form Flower's own app config uses),
so it stays free of Flower while the launchers, the deployment and the Hydra groups all read one table.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from fl_kd.config import ConfigError, build_dataclass, check_range
from fl_kd.kd.adversary import adversarial_client, measured_server
from fl_kd.kd.client import ClientTrainConfig
from fl_kd.models import DeviceTier
from fl_kd.registry import Registry

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig
    from fl_kd.kd.federation import Federation
    from fl_kd.kd.roles import ClientRole, ServerRole


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
    shares : ClassVar[str]
        What its clients send, "logits" or "weights" (not a setting: which adversaries apply to it).
    """

    shares: ClassVar[str] = "logits"

    name: str = "fedgems"
    rounds: int = 5
    fraction_fit: float = 1.0

    def __post_init__(self) -> None:
        check_range("strategy.rounds", self.rounds, low=1)
        check_range("strategy.fraction_fit", self.fraction_fit, low=0.0, high=1.0, low_open=True)

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """Refuse, with a ``ConfigError`` naming the key, an experiment this algorithm cannot run.

        For example a strategy that judges clients by labels needs ``transfer.labelled > 0``, and FedAvg needs one
        client architecture. Called by :class:`~fl_kd.kd.config.ExperimentConfig` once every group is built.
        """

    def reads_server_private(self) -> bool:
        """Whether the server reads its private labelled set (``transfer.server_private``); none does but FLTrust."""
        return False

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


#: The generic Flower apps: they carry any registered algorithm's instructions and answers as records.
GENERIC_SERVER_APP = "fl_kd.strategies.kd_app:app"
GENERIC_CLIENT_APP = "fl_kd.clients.kd_app:app"


@dataclass
class SGDStrategyConfig(StrategyConfig):
    """A strategy whose parties train with SGD: the settings every such strategy shares.

    Attributes
    ----------
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings of all parties; a client takes its epochs, batch size and learning rate from its device tier.
    client_max_grad_norm : float (default: 0.0)
        Clients scale each step's gradient down to this L2 norm when it is longer
        (:class:`~fl_kd.kd.client.ClientTrainConfig`); 0: never.
    """

    momentum: float = ClientTrainConfig.momentum
    weight_decay: float = ClientTrainConfig.weight_decay
    client_max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("strategy.weight_decay", self.weight_decay, low=0.0)
        check_range("strategy.client_max_grad_norm", self.client_max_grad_norm, low=0.0)

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Training settings of a client in device ``tier``."""
        return self.sgd_client_config(tier)

    def sgd_client_config(self, tier: DeviceTier, **settings: Any) -> ClientTrainConfig:
        """The tier's epochs, batch and lr with these SGD settings; ``settings`` add a strategy's own (KD epochs...)."""
        return ClientTrainConfig(
            local_epochs=tier.local_epochs,
            batch_size=tier.batch_size,
            lr=tier.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            max_grad_norm=self.client_max_grad_norm,
            **settings,
        )


@dataclass(frozen=True)
class Algorithm:
    """One registered KD algorithm.

    Attributes
    ----------
    name : str
        Its ``strategy=<name>``.
    config_class : type[StrategyConfig]
        Its settings (the Hydra schema of ``conf/strategy/<name>.yaml`` is derived from it).
    build_server : Callable
        ``build_server(config, federation) -> ServerRole``: the server half, freshly seeded (or from a checkpoint).
    build_client : Callable
        ``build_client(config, federation, client_id) -> ClientRole``: one client half, freshly seeded.
    server_app, client_app : str
        Import references of its Flower ServerApp and ClientApp (by default the generic ones, which drive the two
        halves over messages; the in-process runner drives them directly, with identical results).
    """

    name: str
    config_class: type[StrategyConfig]
    build_server: Callable[[ExperimentConfig, Federation], ServerRole]
    build_client: Callable[[ExperimentConfig, Federation, int], ClientRole]
    server_app: str = GENERIC_SERVER_APP
    client_app: str = GENERIC_CLIENT_APP

    def __post_init__(self) -> None:
        # The one place every runtime builds parties from: malicious clients wrap their honest half here, and the
        # attack's figures are measured beside the server, so no algorithm and no runtime knows about either.
        object.__setattr__(self, "build_client", adversarial_client(self.build_client))
        object.__setattr__(self, "build_server", measured_server(self.build_server))


STRATEGIES: Registry[Algorithm] = Registry("strategy")

C = TypeVar("C", bound=StrategyConfig)


def settings_of(cfg: ExperimentConfig, cls: type[C]) -> C:
    """The run's strategy settings, which must be of class ``cls`` (an algorithm's builders ask for their own)."""
    if not isinstance(cfg.strategy, cls):
        raise TypeError(f"strategy {cfg.strategy.name!r} has no {cls.__name__} settings")
    return cfg.strategy


def _load_builtin() -> None:
    """Import every algorithm folder of :mod:`fl_kd.kd` (each sub-package registers itself when imported)."""
    import fl_kd.kd

    for module in pkgutil.iter_modules(fl_kd.kd.__path__):
        if module.ispkg:
            importlib.import_module(f"fl_kd.kd.{module.name}")


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called ``name``.

    Only the folder of that name is imported when it registers itself (the usual case), so one algorithm's import
    error cannot stop a run of another; every folder is imported only if the name is still unknown.
    """
    if name not in STRATEGIES and name.isidentifier():
        try:
            importlib.import_module(f"fl_kd.kd.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"fl_kd.kd.{name}":
                raise
    if name not in STRATEGIES:
        _load_builtin()
    return STRATEGIES.get(name)


def available_strategies() -> tuple[str, ...]:
    """Names of every registered algorithm."""
    _load_builtin()
    return STRATEGIES.names()
