"""Settings of DS-FL (``conf/strategy/dsfl.yaml`` is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_range
from fl_kd.kd.fedmd.public_logits import PublicLogitsConfig


@dataclass
class DSFLConfig(PublicLogitsConfig):
    """DS-FL: logits on the whole public set, entropy reduction aggregation, client distillation.

    Rounds, client sampling, the server model's distillation, SGD and the wire dtype are the settings every
    logit-sharing peer has (:class:`~fl_kd.kd.fedmd.public_logits.PublicLogitsConfig`). DS-FL's own:

    Attributes
    ----------
    name : str (default: "dsfl")
        Its registry name.
    era_temperature : float (default: 0.1)
        Sharpening temperature T of entropy reduction aggregation, ``softmax(log(mean_k p_k) / T)``, in (0, 1];
        T < 1 lowers the entropy of the averaged soft labels (the paper uses 0.1), T = 1 is the plain average of
        probabilities (the paper's "SA" ablation).
    distill_epochs : int (default: 1)
        Epochs the clients distil the aggregated soft labels on the public set.
    """

    name: str = "dsfl"
    era_temperature: float = 0.1
    distill_epochs: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.era_temperature", self.era_temperature, low=0.0, high=1.0, low_open=True)
        check_range("strategy.distill_epochs", self.distill_epochs, low=0)
