"""Settings of Fed-ET, heterogeneous ensemble knowledge transfer (``conf/strategy/fedet.yaml`` is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from fl_kd.config import check_choice, check_range, require, require_defaults_unless
from fl_kd.kd.algorithm import SGDStrategyConfig
from fl_kd.kd.client import ClientTrainConfig
from fl_kd.kd.robust import ROBUST_RULES, AggregationConfig
from fl_kd.models import DeviceTier

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

#: How the server model learns the weighted consensus: "hard" (cross-entropy on its argmax, the paper's pseudo-label)
#: or "soft" (KD towards the weighted consensus logits, an ablation).
CONSENSUS_LOSSES: tuple[str, ...] = ("hard", "soft")


@dataclass
class FedETConfig(AggregationConfig, SGDStrategyConfig):
    """Fed-ET: small models per architecture on the clients, a large server model trained from their ensemble.

    Attributes
    ----------
    name, rounds, fraction_fit
        See :class:`~fl_kd.kd.algorithm.StrategyConfig`.
    diversity_weight : float (default: 0.05)
        Weight lambda of the diversity regularisation (KD towards the confidence-weighted average of the clients
        that disagree with the consensus); 0 switches it off.
    consensus_loss : str (default: "hard")
        "hard": cross-entropy on the weighted consensus' argmax (pseudo-label); "soft": KD towards the weighted
        consensus logits.
    temperature : float (default: 1.0)
        KD temperature of the diversity term, of the soft consensus and of the transfer back to the small models.
    server_epochs, server_batch_size, server_lr : (default: 4, 64, 0.05)
        Server model training on the public inputs each round (epochs, batch, SGD lr).
    transfer_epochs, transfer_lr : (default: 1, 0.01)
        Distillation of the server model's logits on the public inputs into each architecture's small model
        (epochs, SGD lr; batch ``server_batch_size``); 0 epochs leaves the averaged small models as they are. Kept
        gentle: while the server model is still weak (first rounds), a strong transfer overwrites what the averaged
        small models know (measured on digits, 5 rounds: 2 epochs at lr 0.05 left every model at chance).
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings of all parties; clients take epochs, batch and lr from their device tier.
    aggregation : str (default: "mean")
        How each architecture's small model is fused from its clients' weights: "mean" (sample-weighted, the
        paper's), or a robust rule of :data:`fl_kd.kd.robust.ROBUST_RULES` ("median", "trimmed_mean", "krum",
        "multi_krum"); the ensemble on the public inputs still hears every accepted client.
    trim_fraction, num_malicious, num_selected : (default: 0.2, 0, 0)
        Parameters of those rules (:class:`fl_kd.kd.robust.RobustSettings`).
    """

    shares: ClassVar[str] = "weights"

    name: str = "fedet"
    diversity_weight: float = 0.05
    consensus_loss: str = "hard"
    temperature: float = 1.0
    server_epochs: int = 4
    server_batch_size: int = 64
    server_lr: float = 0.05
    transfer_epochs: int = 1
    transfer_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.diversity_weight", self.diversity_weight, low=0.0)
        check_choice("strategy.consensus_loss", self.consensus_loss, CONSENSUS_LOSSES)
        check_range("strategy.temperature", self.temperature, low=0.0, low_open=True)
        check_range("strategy.server_epochs", self.server_epochs, low=0)
        check_range("strategy.server_batch_size", self.server_batch_size, low=1)
        check_range("strategy.server_lr", self.server_lr, low=0.0, low_open=True)
        check_range("strategy.transfer_epochs", self.transfer_epochs, low=0)
        check_range("strategy.transfer_lr", self.transfer_lr, low=0.0, low_open=True)
        server = ("server_batch_size", "server_lr")
        require_defaults_unless(self, server, self.server_epochs > 0, "is not read with strategy.server_epochs=0")
        transfer = ("transfer_lr",)
        require_defaults_unless(self, transfer, self.transfer_epochs > 0, "is not read with strategy.transfer_epochs=0")
        self.check_aggregation(ROBUST_RULES.names())

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """A consensus and its dissenters need an ensemble: at least two clients sampled per round."""
        sampled = int(self.fraction_fit * experiment.num_clients + 0.5)
        require(
            sampled >= 2,
            "strategy fedet distils the ensemble of the round's clients: it needs at least 2 clients per round "
            f"(num_clients * strategy.fraction_fit = {experiment.num_clients} * {self.fraction_fit})",
        )

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Local training settings of a client in device ``tier`` (Fed-ET clients do not distil)."""
        return self.sgd_client_config(tier, distill_epochs=0, temperature=self.temperature)
