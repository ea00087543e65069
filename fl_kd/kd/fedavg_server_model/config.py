"""Settings of FedAvg of the server model (``conf/strategy/fedavg_server_model.yaml`` is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.kd.fedavg.config import WeightSharingConfig


@dataclass
class FedAvgServerModelConfig(WeightSharingConfig):
    """FedAvg in which every client trains the device profile's server model, whatever its tier.

    Any device profile works: tiers decide only local epochs, batch size, learning rate and device speed.

    Attributes
    ----------
    name, rounds, fraction_fit, momentum, weight_decay
        See :class:`~fl_kd.kd.fedavg.config.WeightSharingConfig`.
    """

    name: str = "fedavg_server_model"
