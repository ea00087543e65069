"""Settings of FedDF (``conf/strategy/feddf.yaml`` is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_choice, check_range, require, require_defaults_unless
from fl_kd.kd.fedavg.config import WeightSharingConfig
from fl_kd.kd.fedavg.root import FLTRUST

#: Whose logits form the distillation teacher: every accepted client model (the paper's), or each architecture's
#: sample-weighted average (one forward pass per architecture instead of per client).
ENSEMBLES: tuple[str, ...] = ("clients", "prototypes")


@dataclass
class FedDFConfig(WeightSharingConfig):
    """Per-architecture FedAvg, then ensemble distillation on the transfer set's inputs.

    Attributes
    ----------
    name, rounds, fraction_fit, momentum, weight_decay
        See :class:`~fl_kd.kd.fedavg.config.WeightSharingConfig`.
    ensemble : str (default: "clients")
        The teacher: mean logits of every accepted client model ("clients", as in the paper) or of the
        architecture-averaged models ("prototypes").
    temperature : float (default: 1.0)
        KD temperature of the distillation (KL(teacher || student) on ``softmax(logits / T)``, scaled by T**2).
    distill_epochs : int (default: 5)
        Epochs over the transfer set's inputs distilling the ensemble into each architecture's averaged model.
    distill_batch_size : int (default: 64)
        Mini-batch size of every server-side distillation.
    distill_lr : float (default: 0.001)
        Adam learning rate of the prototypes' distillation (the paper's Adam, 1e-3).
    server_epochs : int (default: 20)
        Epochs distilling the same ensemble into the large server model, whose accuracy the server reports (it
        learns from nothing else, so it gets more epochs than the prototypes, which also train on the clients).
    server_lr : float (default: 0.001)
        Adam learning rate of the server model's distillation.
    """

    name: str = "feddf"
    ensemble: str = "clients"
    temperature: float = 1.0
    distill_epochs: int = 5
    distill_batch_size: int = 64
    distill_lr: float = 1e-3
    server_epochs: int = 20
    server_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.aggregation != FLTRUST,
            "strategy.aggregation=fltrust weighs weight updates against the server's own, but FedDF also fuses its "
            "teacher's logits by the rule: choose mean, median, trimmed_mean, krum or multi_krum",
        )
        check_choice("strategy.ensemble", self.ensemble, ENSEMBLES)
        check_range("strategy.temperature", self.temperature, low=0.0, low_open=True)
        check_range("strategy.distill_epochs", self.distill_epochs, low=0)
        check_range("strategy.distill_batch_size", self.distill_batch_size, low=1)
        check_range("strategy.distill_lr", self.distill_lr, low=0.0, low_open=True)
        check_range("strategy.server_epochs", self.server_epochs, low=0)
        check_range("strategy.server_lr", self.server_lr, low=0.0, low_open=True)
        keys = ("distill_batch_size", "distill_lr")
        require_defaults_unless(self, keys, self.distill_epochs > 0, "is not read with strategy.distill_epochs=0")
        require_defaults_unless(
            self, ("server_lr",), self.server_epochs > 0, "is not read with strategy.server_epochs=0"
        )
