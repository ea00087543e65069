"""Settings of the selective-distillation server (kept apart so that the server module stays one job)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_choice
from fl_kd.kd.fusion import FUSION_RULES

CORRECTNESS = ("train", "held_out")
"""Where the server's correctness is judged: on the samples it trains on (FedGEMS), or on a held-out slice."""

UNLABELLED_TRUST = ("none", "class_reliability", "learned")
"""How the unlabelled part of the transfer set is used: not at all (FedGEMS), clients weighted by per-class precision,
or by a per-client, per-class combiner fitted on the held-out slice."""

RELIABILITY_ON = ("labelled", "held_out")
"""Where a client's per-class precision is measured: the whole labelled part, or the held-out slice only."""


@dataclass
class ServerDistillConfig:
    """Hyperparameters of the server's distillation phase.

    Attributes
    ----------
    epochs : int (default: 1)
        Passes over the transfer set per round (E_srv).
    batch_size : int (default: 64)
        Mini-batch size on the transfer set.
    lr, momentum, weight_decay : float (default: 0.05, 0.9, 5e-4)
        SGD settings; the optimiser is recreated each round.
    epsilon : float (default: 0.75)
        Weight of cross-entropy in ``eps * CE + (1 - eps) * KD``.
    temperature : float (default: 1.0)
        KD temperature.
    weighting : str (default: "inverse_entropy")
        Client fusion rule, a name in :data:`fl_kd.kd.fusion.FUSION_RULES`.
    correctness, held_out_fraction, distill_correct, unlabelled_trust, reliability_power, reliability_on,
    teacher_min_confidence, unlabelled_per_round, learned_weight_decay, learned_prob_floor, learned_trim, canaries,
    canary_z, unlabelled_cache
        The optional extensions; see :class:`~fl_kd.kd.fedgems.config.FedGEMSConfig`. The defaults are FedGEMS.
    ema_decay : float (default: 0.0)
        The server shows an exponential moving average of its weights, updated after every step with this decay
        (``server_ema`` of :class:`~fl_kd.kd.fedgems.config.FedGEMSConfig`); 0 shows the trained weights.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epsilon: float = 0.75
    temperature: float = 1.0
    weighting: str = "inverse_entropy"
    correctness: str = "train"
    held_out_fraction: float = 0.2
    distill_correct: bool = False
    unlabelled_trust: str = "none"
    reliability_power: float = 4.0
    reliability_on: str = "labelled"
    teacher_min_confidence: float = 0.0
    unlabelled_per_round: int = 0
    learned_weight_decay: float = 1e-3
    learned_prob_floor: float = 0.0
    learned_trim: int = 0
    canaries: int = 0
    canary_z: float = 3.0
    unlabelled_cache: int = 0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_choice("correctness", self.correctness, CORRECTNESS)
        check_choice("reliability_on", self.reliability_on, RELIABILITY_ON)
        if self.reliability_on == "held_out" and self.correctness != "held_out":
            raise ValueError("reliability_on='held_out' needs correctness='held_out'")
        if self.unlabelled_trust == "learned" and self.reliability_on != "held_out":
            raise ValueError(
                "unlabelled_trust='learned' needs reliability_on='held_out': the combiner is fitted on labels no "
                "client trained on"
            )
        if self.canaries and (self.unlabelled_trust == "none" or self.reliability_on != "held_out"):
            raise ValueError(
                "canaries need unlabelled_trust and reliability_on='held_out': a client's accuracy on them is "
                "compared with its accuracy on the held-out slice"
            )
        cache = self.unlabelled_cache
        if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
            raise ValueError(f"unlabelled_cache must be an integer >= 0 (rounds), got {cache!r}")
        if cache and self.unlabelled_trust == "none":
            raise ValueError(
                "unlabelled_cache keeps the clients' teacher on unlabelled samples: it needs unlabelled_trust"
            )
        if self.canaries < 0 or self.canary_z <= 0 or self.learned_trim < 0:
            raise ValueError(f"need canaries >= 0, canary_z > 0 and learned_trim >= 0: {self}")
        if not 0.0 <= self.learned_prob_floor < 1.0:
            raise ValueError(f"learned_prob_floor must lie in [0, 1), got {self.learned_prob_floor}")
        if self.learned_weight_decay < 0:
            raise ValueError(f"learned_weight_decay must be >= 0, got {self.learned_weight_decay}")
        if not 0.0 <= self.teacher_min_confidence <= 1.0:
            raise ValueError(f"teacher_min_confidence must lie in [0, 1], got {self.teacher_min_confidence}")
        check_choice("unlabelled_trust", self.unlabelled_trust, UNLABELLED_TRUST)
        if not 0.0 < self.held_out_fraction < 1.0 or self.reliability_power < 0 or self.unlabelled_per_round < 0:
            raise ValueError(
                f"need held_out_fraction in (0, 1), reliability_power >= 0, unlabelled_per_round >= 0: {self}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {self}")
        if not 0.0 <= self.epsilon <= 1.0 or self.temperature <= 0:
            raise ValueError(f"need epsilon in [0, 1] and temperature > 0; got {self}")
        check_choice("weighting", self.weighting, FUSION_RULES.names())
