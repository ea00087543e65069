"""Settings of FedAvg (``conf/strategy/fedavg.yaml`` is derived from them) and of every weight-sharing peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_kd.config import check_range, require
from fl_kd.kd.algorithm import StrategyConfig
from fl_kd.kd.client import ClientTrainConfig
from fl_kd.models import DeviceTier

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig


@dataclass
class WeightSharingConfig(StrategyConfig):
    """What every strategy that moves model weights (FedAvg, FedAvg of the server model, FedDF) sets.

    Local epochs, batch size and learning rate come from each client's device tier, as for every other strategy,
    so strategies differ only in what moves and how the server combines it.

    Attributes
    ----------
    name, rounds, fraction_fit
        See :class:`~fl_kd.kd.algorithm.StrategyConfig`.
    momentum, weight_decay : float (default: 0.9, 5e-4)
        Client SGD settings (the same as FedGEMS' clients, so local training is identical across strategies; the
        optimiser is recreated each round, so no momentum survives between rounds).
    """

    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("strategy.weight_decay", self.weight_decay, low=0.0)

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Training settings of a client in device ``tier`` (local training only: no client distillation)."""
        return ClientTrainConfig(
            local_epochs=tier.local_epochs,
            batch_size=tier.batch_size,
            lr=tier.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            distill_epochs=0,
        )


def client_architectures(experiment: ExperimentConfig) -> list[str]:
    """The model names the device profile's tiers give clients (tiers with a zero share left out), sorted."""
    return sorted({tier.model for tier in experiment.device_profile.tiers if tier.share > 0})


@dataclass
class FedAvgConfig(WeightSharingConfig):
    """FedAvg: every client trains the one global model; the server averages the weights by sample count.

    Attributes
    ----------
    name, rounds, fraction_fit, momentum, weight_decay
        See :class:`WeightSharingConfig`.
    """

    name: str = "fedavg"

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """Weights of different architectures cannot be averaged: every tier must train the same model."""
        models = client_architectures(experiment)
        require(
            len(models) == 1,
            f"strategy fedavg averages one architecture, but device_profile {experiment.device_profile.name!r} "
            f"gives clients {', '.join(models)}: choose a homogeneous device_profile (device_profile=homogeneous), "
            "or strategy fedavg_server_model or feddf",
        )
