"""Settings of the selective-distillation server (kept apart so that the server module stays one job)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral
from typing import Any

from fl_kd.config import check_choice, check_range, require
from fl_kd.kd.consensus_config import ConsensusConfig
from fl_kd.kd.fusion import FUSION_RULES

CORRECTNESS = ("train", "held_out")
"""Where the server's correctness is judged: on the samples it trains on (FedGEMS), or on a held-out slice."""

UNLABELLED_TRUST = ("none", "class_reliability", "learned")
"""How the unlabelled part of the transfer set is used: not at all (FedGEMS), clients weighted by per-class precision,
or by a per-client, per-class combiner fitted on the held-out slice."""

RELIABILITY_ON = ("labelled", "held_out")
"""Where a client's per-class precision is measured: the whole labelled part, or the held-out slice only."""


@dataclass(kw_only=True)
class SelectionConfig(ConsensusConfig):
    """What the server distils and whom it trusts, declared once for the core server and the strategy.

    :class:`ServerDistillConfig` and :class:`~fl_kd.kd.fedgems.config.FedGEMSConfig` (the ``strategy.*`` settings)
    both inherit these fields and :meth:`check_selection`; the defaults are FedGEMS.

    Attributes
    ----------
    correctness : {"train", "held_out"} (default: "train")
        Where the server's correctness is judged. "train" (FedGEMS): on the samples it trains on, so memorising
        them closes the query. "held_out": a seeded ``held_out_fraction`` of the labelled part is never trained on
        by label nor cached, by the server or by the clients (they distil the server's logits there without
        cross-entropy, so the server cannot learn the labels through their answers); there the server asks the
        clients wherever it is wrong and distils their soft targets alone, fused without the label (with
        ``unlabelled_trust``, whose trust is fitted there, the slice is not distilled).
    held_out_fraction : float (default: 0.2)
        Share of the labelled part held out with ``correctness="held_out"``.
    held_out_server_labels : bool (default: False)
        With ``reliability_on=held_out`` and ``unlabelled_trust``, where the slice serves only to measure the
        clients: the server also trains on its labels by cross-entropy, as on the rest of the labelled part, and the
        clients leave the slice out of everything they learn from the server (its logits there would now carry the
        labels to them, and the trust fitted there would read memorised answers). The server's correctness on the
        slice is then no longer honest, so neither its accuracy there nor where no client was right is reported.
    distill_correct : bool (default: False)
        Also distil the clients' fused soft targets where the server is right (their dark knowledge); the query
        then covers the trained samples the server gets right too.
    unlabelled_trust : {"none", "class_reliability", "learned"} (default: "none")
        "class_reliability": clients answer on the whole labelled part and on the unlabelled part too; on each
        unlabelled sample the server distils the clients' softmax outputs weighted by their precision, measured on
        the labelled part, for the class they predict (raised to ``reliability_power``). "learned" (needs
        ``reliability_on=held_out``): each round the server fits one weight per client and class (plus a class
        bias) on the clients' answers on the held-out slice, whose labels no client trained on, and distils
        ``log_softmax(sum_k w[k, y] * log_softmax(z_k)[y] + b_y)`` (:mod:`fl_kd.kd.fedgems.combiner`).
    reliability_power : float (default: 4.0)
        Sharpness of that trust (0: plain average).
    reliability_on : {"labelled", "held_out"} (default: "labelled")
        Where that precision is measured. Clients distil on the labelled part with its labels, so after a few
        rounds every client looks precise there in every class. "held_out" (needs ``correctness=held_out``)
        measures it on the held-out slice only, whose labels the clients are never given.
    teacher_min_confidence : float (default: 0.0)
        The server distils an unlabelled sample only where the clients' fused teacher gives its top class at least
        this probability (calibrated confidence as a second selection; 0 keeps every answered sample).
    learned_weight_decay : float (default: 0.001)
        With ``unlabelled_trust=learned``: the combiner's penalty ``sum (w - 1) ** 2`` towards equal weights.
    learned_prob_floor : float (default: 0.0)
        With ``unlabelled_trust=learned``: each client's probabilities enter the combiner no lower than this (below
        1 / C; 0: no floor), so one confident answer cannot veto a class (a malicious client's one-hot lie would
        count ``log(1e-4)`` against the truth; with 0.01 it counts as one firm dissent).
    learned_trim : int (default: 0)
        With ``unlabelled_trust=learned``: the combiner leaves out this many lowest and this many highest terms of
        each sample and class (a trimmed product), so that up to that many clients lying together count for
        nothing.
    unlabelled_per_round : int (default: 0)
        Unlabelled samples asked per round (a seeded subset); 0, or more than there are, asks all of them (so a
        preset made for a large unlabelled part runs on a small one). The self-training baseline labels as many.
    unlabelled_cache : int (default: 0)
        With ``unlabelled_trust``: the server keeps, per unlabelled sample, the newest fused client teacher and the
        round it was computed in, and each round distils this round's teacher together with those cached in the
        last ``unlabelled_cache`` rounds (a sample answered again takes the new one, or none when the confidence
        gate drops the new one), so a teacher paid for once is learnt from for that many rounds more at no extra
        uplink (:mod:`fl_kd.kd.fedgems.teacher_cache`). 0 (today): only this round's subset is distilled. Canaries
        never enter the cache. With canaries the cache also keeps each round's answers, and a client the canaries
        screen out is fused out of every cached teacher it answered, those of the rounds before it was caught
        included (per round: ``canary_refused`` teachers fused again, ``canary_purged`` of them dropped because
        nobody else backs them).
    canaries : int (default: 0)
        Samples of the unlabelled part whose labels the server holds and keeps to itself (needs
        ``unlabelled_trust`` and ``reliability_on=held_out``). Queried like any other unlabelled sample and never
        distilled, they catch a client that is honest where it knows it is checked and poisons the rest: one whose
        accuracy on them falls short of its accuracy on the held-out slice by more than ``canary_z`` standard errors
        (pooled over the rounds so far) is left out of the unlabelled teacher (:mod:`fl_kd.kd.fedgems.canaries`).
        They cost that many labels more.
    canary_z : float (default: 3.0)
        The screen's threshold.
    canary_burst_z : float (default: 0.0)
        Also screen out a client whose canary accuracy falls short of its held-out slice accuracy by more than this
        many standard errors in a window of its latest rounds (the last one, the last two, ...), both counted in
        the same rounds; 0 is off. Pooling dilutes a liar that is honest for rounds and then lies
        (``adversary.from_round``); the windows do not.
    consensus_z, consensus_margin, consensus_confidence, consensus_burst_z, consensus_raise,
    consensus_raise_margin
        The label-free consensus screen (:class:`~fl_kd.kd.consensus_config.ConsensusConfig`; needs ``unlabelled_trust``
        and ``reliability_on=held_out``: its reference is the held-out slice). A client it screens is left out of
        the unlabelled teacher, as the canaries leave one out.
    """

    correctness: str = "train"
    held_out_fraction: float = 0.2
    held_out_server_labels: bool = False
    distill_correct: bool = False
    unlabelled_trust: str = "none"
    reliability_power: float = 4.0
    reliability_on: str = "labelled"
    teacher_min_confidence: float = 0.0
    learned_weight_decay: float = 1e-3
    learned_prob_floor: float = 0.0
    learned_trim: int = 0
    unlabelled_per_round: int = 0
    unlabelled_cache: int = 0
    canaries: int = 0
    canary_z: float = 3.0
    canary_burst_z: float = 0.0

    def check_selection(self, prefix: str = "") -> None:
        """Raise :class:`~fl_kd.config.ConfigError` naming ``prefix + key`` for a value or combination out of range."""
        check_choice(f"{prefix}correctness", self.correctness, CORRECTNESS)
        check_range(f"{prefix}held_out_fraction", self.held_out_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_choice(f"{prefix}unlabelled_trust", self.unlabelled_trust, UNLABELLED_TRUST)
        check_range(f"{prefix}reliability_power", self.reliability_power, low=0.0)
        check_choice(f"{prefix}reliability_on", self.reliability_on, RELIABILITY_ON)
        check_range(f"{prefix}teacher_min_confidence", self.teacher_min_confidence, low=0.0, high=1.0)
        check_range(f"{prefix}learned_weight_decay", self.learned_weight_decay, low=0.0)
        check_range(f"{prefix}learned_prob_floor", self.learned_prob_floor, low=0.0, high=1.0, high_open=True)
        for key in ("learned_trim", "unlabelled_per_round", "unlabelled_cache", "canaries"):
            count = getattr(self, key)
            require(
                isinstance(count, Integral) and not isinstance(count, bool),
                f"{prefix}{key} must be a whole number, got {count!r}",
            )
            check_range(f"{prefix}{key}", count, low=0)
        check_range(f"{prefix}canary_z", self.canary_z, low=0.0, low_open=True)
        check_range(f"{prefix}canary_burst_z", self.canary_burst_z, low=0.0)
        self.check_consensus(prefix)
        require(
            self.reliability_on == "labelled" or self.correctness == "held_out",
            f"{prefix}reliability_on=held_out needs {prefix}correctness=held_out",
        )
        require(
            self.unlabelled_trust != "learned" or self.reliability_on == "held_out",
            f"{prefix}unlabelled_trust=learned needs {prefix}reliability_on=held_out (and so "
            f"{prefix}correctness=held_out): its combiner is fitted on the clients' answers where none of them "
            "trained on the label, and only the held-out slice is such a place",
        )
        require(
            not self.held_out_server_labels or (self.unlabelled_trust != "none" and self.reliability_on == "held_out"),
            f"{prefix}held_out_server_labels needs {prefix}unlabelled_trust=class_reliability or learned and "
            f"{prefix}reliability_on=held_out: without them the server distils the clients on the held-out slice, "
            "and its correctness there is what keeps asking them",
        )
        require(
            self.unlabelled_cache == 0 or self.unlabelled_trust != "none",
            f"{prefix}unlabelled_cache keeps the clients' teacher on unlabelled samples: it needs "
            f"{prefix}unlabelled_trust=class_reliability or learned",
        )
        require(
            self.canaries == 0 or (self.unlabelled_trust != "none" and self.reliability_on == "held_out"),
            f"{prefix}canaries needs {prefix}unlabelled_trust=class_reliability or learned and "
            f"{prefix}reliability_on=held_out: a client's accuracy on them is compared with the held-out slice's",
        )
        require(
            self.consensus_z == 0 or (self.unlabelled_trust != "none" and self.reliability_on == "held_out"),
            f"{prefix}consensus_z needs {prefix}unlabelled_trust=class_reliability or learned and "
            f"{prefix}reliability_on=held_out: a client's agreement with the others on the unlabelled samples is "
            "compared with its agreement on the held-out slice",
        )

        self._check_unused(prefix)

    def _check_unused(self, prefix: str) -> None:
        """A setting changed from its default where what it tunes is off would be dropped without a word (a run
        that looks like an ablation of it, and is the baseline)."""
        defaults = {f.name: f.default for f in fields(SelectionConfig)}
        needs = {
            "held_out_fraction": (self.correctness == "held_out", "correctness=held_out"),
            "teacher_min_confidence": (
                self.unlabelled_trust != "none",
                "unlabelled_trust=class_reliability or learned",
            ),
            "learned_weight_decay": (self.unlabelled_trust == "learned", "unlabelled_trust=learned"),
            "learned_prob_floor": (self.unlabelled_trust == "learned", "unlabelled_trust=learned"),
            "learned_trim": (self.unlabelled_trust == "learned", "unlabelled_trust=learned"),
            "canary_z": (self.canaries > 0, "canaries > 0"),
            "canary_burst_z": (self.canaries > 0, "canaries > 0"),
            "reliability_power": (self.unlabelled_trust == "class_reliability", "unlabelled_trust=class_reliability"),
        }
        for key, (used, condition) in needs.items():
            require(
                used or getattr(self, key) == defaults[key],
                f"{prefix}{key}={getattr(self, key)} is used only with {prefix}{condition}: set that too, or leave "
                f"{prefix}{key} at its default ({defaults[key]})",
            )

    def selection_settings(self) -> dict[str, Any]:
        """These settings by name, to build another config that shares them."""
        return {field.name: getattr(self, field.name) for field in fields(SelectionConfig)}


@dataclass
class ServerDistillConfig(SelectionConfig):
    """Hyperparameters of the server's distillation phase.

    Attributes
    ----------
    epochs : int (default: 4)
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
    correctness, held_out_fraction, held_out_server_labels, distill_correct, unlabelled_trust, reliability_power,
    reliability_on, teacher_min_confidence, learned_weight_decay, learned_prob_floor, learned_trim,
    unlabelled_per_round, unlabelled_cache, canaries, canary_z, canary_burst_z, consensus_z, consensus_margin,
    consensus_confidence, consensus_burst_z, consensus_raise, consensus_raise_margin
        See :class:`SelectionConfig`.
    ema_decay : float (default: 0.0)
        The server shows an exponential moving average of its weights, updated after every step with this decay
        (``server_ema`` of :class:`~fl_kd.kd.fedgems.config.FedGEMSConfig`); 0 shows the trained weights.
    augment_shift : int (default: 0)
        In training, each image is shifted by up to this many pixels each way (:mod:`fl_kd.data.augment`); the
        server judges its correctness and fills its cache on the view it trains on. 0: no shift.
    augment_mirror : bool (default: False)
        In training, each image is mirrored left-right with probability 1/2.
    """

    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epsilon: float = 0.75
    temperature: float = 1.0
    weighting: str = "inverse_entropy"
    ema_decay: float = 0.0
    augment_shift: int = 0
    augment_mirror: bool = False

    def __post_init__(self) -> None:
        self.check_selection()
        check_range("epochs", self.epochs, low=0)
        check_range("batch_size", self.batch_size, low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("epsilon", self.epsilon, low=0.0, high=1.0)
        check_range("temperature", self.temperature, low=0.0, low_open=True)
        check_range("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_range("augment_shift", self.augment_shift, low=0)
        check_choice("weighting", self.weighting, FUSION_RULES.names())
