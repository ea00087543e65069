"""Settings of FedAvg (``conf/strategy/fedavg.yaml`` is derived from them) and of every weight-sharing peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from fl_kd.config import require
from fl_kd.kd.algorithm import SGDStrategyConfig
from fl_kd.kd.client import ClientTrainConfig
from fl_kd.kd.fedavg.root import FLTRUST
from fl_kd.kd.robust import ROBUST_RULES, AggregationConfig
from fl_kd.models import DeviceTier

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig


@dataclass
class WeightSharingConfig(AggregationConfig, SGDStrategyConfig):
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
    aggregation : str (default: "mean")
        How the server fuses the clients' weights (per architecture): "mean" (FedAvg's sample-weighted average),
        a robust rule of :data:`fl_kd.kd.robust.ROBUST_RULES`: "median", "trimmed_mean", "krum", "multi_krum"
        (FedDF fuses its ensemble teacher's logits by the same rule), or "fltrust" (not FedDF): each update
        weighted by its cosine with the server's own update on its root data set (``transfer.server_private``
        where set, else the labelled transfer set), rescaled to its length (:mod:`fl_kd.kd.fedavg.root`).
    trim_fraction, num_malicious, num_selected : (default: 0.2, 0, 0)
        Parameters of those rules (:class:`fl_kd.kd.robust.RobustSettings`).
    """

    shares: ClassVar[str] = "weights"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_aggregation((*ROBUST_RULES.names(), FLTRUST))

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """FLTrust's reference update trains on a labelled set of the server's, so there must be one."""
        transfer = experiment.transfer
        require(
            self.aggregation != FLTRUST or transfer.labelled > 0 or transfer.server_private > 0,
            "strategy.aggregation=fltrust needs labelled data for the server's own update (its root data set): "
            "transfer.server_private > 0, or a labelled transfer set (transfer.labelled > 0)",
        )

    def reads_server_private(self) -> bool:
        """FLTrust's root data set is the server's private set where the run has one."""
        return self.aggregation == FLTRUST

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Training settings of a client in device ``tier`` (local training only: no client distillation)."""
        return self.sgd_client_config(tier, distill_epochs=0)


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
        super().check_experiment(experiment)
        models = client_architectures(experiment)
        require(
            len(models) == 1,
            f"strategy fedavg averages one architecture, but device_profile {experiment.device_profile.name!r} "
            f"gives clients {', '.join(models)}: choose a homogeneous device_profile (device_profile=homogeneous), "
            "or strategy fedavg_server_model or feddf",
        )
