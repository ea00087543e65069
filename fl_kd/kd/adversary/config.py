"""Settings of the malicious clients (group ``adversary``) and who they are.

Which clients misbehave is drawn from the run's seed alone, so every runtime (the in-process runner, each Flower
ClientApp process, the metric side) names the same clients without being told; the server's fusion never is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_kd.config import check_choice, check_range, require
from fl_kd.kd.seeding import derive_seed

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

NONE = "none"
"""The honest federation: no client is wrapped, every run is bit-identical to one without this group."""

FREE_RIDER_MODES: tuple[str, ...] = ("stale", "random")
CHECKED_ANSWERS: tuple[str, ...] = ("truth", "honest", "poisoned")

POISON_WHERE: tuple[str, ...] = ("random", "uncertain")
LIE_AS: tuple[str, ...] = ("one_hot", "swap", "quantile", "traded", "skewed")

#: Share of malicious clients a behaviour starts from when chosen by name (:meth:`AdversaryConfig.defaults`, the
#: ``adversary`` config group): a named attack with no attacker would measure nothing.
DEFAULT_FRACTION = 0.3
#: Settings of a behaviour's defaults that differ from the fields' (beside :data:`DEFAULT_FRACTION`).
BEHAVIOUR_DEFAULTS: dict[str, dict[str, float]] = {"sign_flip": {"scale": 1.0}}


@dataclass
class AdversaryConfig:
    """What the malicious clients do, and how many there are.

    Attributes
    ----------
    name : str (default: "none")
        A registered behaviour (:data:`fl_kd.kd.adversary.ADVERSARIES`).
    fraction : float (default: 0.0; :data:`DEFAULT_FRACTION` in a behaviour's :meth:`defaults`)
        Share of the clients that misbehave, in [0, 1]; ``round(fraction * num_clients)`` (halves up) of them,
        drawn from the seed (:func:`malicious_clients`).
    scale : float (default: 10.0; 1.0 in ``sign_flip``'s :meth:`defaults`)
        lambda of ``scaled_logits`` (logits * lambda), ``scaled_update`` (global + lambda * update) and
        ``sign_flip`` (global - lambda * update).
    noise_std : float (default: 1.0)
        Standard deviation of ``gaussian_update``'s noise and of a ``free_rider``'s random weights.
    confidence : float (default: 10.0)
        The logit ``confident_wrong`` puts on its wrong class, and ``camouflage`` on its one class (every other
        logit is 0).
    source, target : int (default: 0, 1)
        ``targeted``: private samples of class ``source`` are trained as ``target``, and answers that say
        ``source`` say ``target`` instead.
    poison_share : float (default: 1.0)
        ``camouflage``: the share of the unlabelled samples it lies on each round (it answers the rest honestly).
    checked : {"truth", "honest", "poisoned"} (default: "truth")
        ``camouflage``: what it answers where a label can check it: one-hot on the true class (sure and right, so
        it takes an inverse-entropy weight), its honest logits (no more accurate there than elsewhere), or the
        same as where none can, a share ``poison_share`` of its answers turned into lies (the attacker that knows a
        screen comparing the two, and pays for it with the trust that labels measure).
    poison_where : {"random", "uncertain"} (default: "random")
        ``camouflage`` with ``poison_share < 1``: which rows it lies on, a random share or the share on which its
        own top class is least sure. Honest clients disagree most there, so a screen that counts disagreements sees
        its lies among theirs, and the teacher it tries to turn is least sure there too.
    lie_as : {"one_hot", "swap", "quantile", "traded", "skewed"} (default: "one_hot")
        ``camouflage``: how a lie looks. "one_hot": the logit ``confidence`` on the wrong class, every other 0, as
        sure as an answer can be. "swap": its own logits with those of its top class and the wrong class swapped,
        so the lie states the confidence its honest answer had (the attacker that knows a screen sorting answers by
        their stated confidence, and pays for it with the weight a confidence-weighted fusion gives an unsure answer).
        "quantile": the wrong class with the top-class probability that the quantile ``lie_quantile`` of its own
        answers on the labelled part states, the rest shared evenly by the other classes (the attacker that knows
        a screen comparing how sure it says it is there and elsewhere, and states its lies as sure as a typical
        checked answer rather than one-hot). "traded" (with ``poison_share < 1``): the lies take the confidences of
        as many of its surest honest answers, which state the lies' low ones instead, so that the confidences it
        states elsewhere are, as a whole, those of its honest answers (the attacker that knows that screen exactly).
        "skewed": no lie about the class at all: its honest logits, with the wrong class raised to just under its top
        class, so that every answer is as right as its honest one and only its soft knowledge lies (the attacker
        that knows every screen tests the class it names, and poisons what the server distils beyond it).
        ``skewed_colluders`` with ``poison_where="uncertain"`` reads "swap" alone: the answers on which it gives up
        lift keep the confidence they stated honestly (the probability taken goes to its other classes, not to its
        top), the trader that knows the confidence test as well as the raise test.
    lie_quantile : float (default: 0.75)
        The quantile of ``lie_as="quantile"``, in [0, 1].
    coordinated : bool (default: False)
        ``confident_wrong`` and ``camouflage``: the malicious clients lie together. Which unlabelled samples they
        poison and the wrong class they name there are fixed per transfer position by a key they share (not drawn
        by each client per round), so on a poisoned sample every one of them names the same wrong class: a trim of
        ``t`` terms per sample and class removes none of them once more than ``t`` lie there.
    z : float | None (default: None)
        ``alie``: the shift ``mu - z * sigma`` the colluders send, in standard deviations of their honest updates;
        None: Baruch et al.'s largest shift that a majority of the round's answers still straddles
        (:func:`~fl_kd.kd.adversary.collusion.alie_z`). ``skewed_colluders``: how far under the raise test's cut
        they aim each lift, in standard errors of their estimate of the other clients' mean; None: 2
        (:data:`~fl_kd.kd.adversary.skewed_colluders.MARGIN_Z`).
    free_rider_mode : str (default: "stale")
        ``free_rider`` skips local training; "stale" answers with its untrained model as it stands (for weight
        sharing: the global weights echoed), "random" with random logits (or global weights plus noise).
    from_round : int (default: 1)
        The first round in which the malicious clients misbehave; before it they answer as honest clients. The
        attacker that knows a screen pools its evidence over rounds: it is honest while trust builds up, then
        spends it. Any behaviour that rewrites a client's own answers; not one that poisons the private labels
        (they are set once), colludes through the server, or stays away (``absent``).
    """

    name: str = NONE
    fraction: float = 0.0
    scale: float = 10.0
    noise_std: float = 1.0
    confidence: float = 10.0
    source: int = 0
    target: int = 1
    free_rider_mode: str = "stale"
    poison_share: float = 1.0
    checked: str = "truth"
    poison_where: str = "random"
    lie_as: str = "one_hot"
    lie_quantile: float = 0.75
    coordinated: bool = False
    z: float | None = None
    from_round: int = 1

    def __post_init__(self) -> None:
        from fl_kd.kd.adversary.behaviours import ADVERSARIES

        check_choice("adversary.name", self.name, ADVERSARIES.names())
        check_range("adversary.fraction", self.fraction, low=0.0, high=1.0)
        require(
            self.name != NONE or self.fraction == 0.0,
            f"adversary.fraction={self.fraction} needs a behaviour: choose one, e.g. adversary=label_flip (none has "
            "no attackers)",
        )
        check_range("adversary.scale", self.scale, low=0.0, low_open=True)
        check_range("adversary.noise_std", self.noise_std, low=0.0)
        check_range("adversary.confidence", self.confidence, low=0.0, low_open=True)
        check_range("adversary.source", self.source, low=0)
        check_range("adversary.target", self.target, low=0)
        require(self.source != self.target, "adversary.source and adversary.target must be different classes")
        if self.z is not None:
            check_range("adversary.z", self.z, low=0.0)
        check_choice("adversary.free_rider_mode", self.free_rider_mode, FREE_RIDER_MODES)
        check_range("adversary.poison_share", self.poison_share, low=0.0, high=1.0)
        check_range("adversary.from_round", self.from_round, low=1)
        check_choice("adversary.checked", self.checked, CHECKED_ANSWERS)
        check_choice("adversary.poison_where", self.poison_where, POISON_WHERE)
        check_choice("adversary.lie_as", self.lie_as, LIE_AS)
        check_range("adversary.lie_quantile", self.lie_quantile, low=0.0, high=1.0)
        require(
            self.poison_where == "random" or not self.coordinated,
            "adversary.poison_where=uncertain picks rows by each client's own answers: it cannot be coordinated",
        )
        require(
            isinstance(self.coordinated, bool), f"adversary.coordinated must be true or false, got {self.coordinated!r}"
        )

    @classmethod
    def defaults(cls, name: str) -> AdversaryConfig:
        """Behaviour ``name`` as the ``adversary`` config group starts it: :data:`DEFAULT_FRACTION` of the clients
        (none for ``none``) and the behaviour's own :data:`BEHAVIOUR_DEFAULTS`."""
        fraction = 0.0 if name == NONE else DEFAULT_FRACTION
        return cls(name=name, fraction=fraction, **BEHAVIOUR_DEFAULTS.get(name, {}))  # type: ignore[arg-type]

    def check_classes(self, num_classes: int) -> None:
        """``source`` and ``target`` must be classes of the data (known once it is loaded)."""
        for key in ("source", "target"):
            value = getattr(self, key)
            require(value < num_classes, f"adversary.{key}={value} is no class of a {num_classes}-class dataset "
                    f"(0 to {num_classes - 1})")  # fmt: skip

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """A behaviour that corrupts logits needs a strategy whose clients send logits, and likewise for weights."""
        from fl_kd.kd.adversary.behaviours import ADVERSARIES

        kind = ADVERSARIES.get(self.name).kind
        shares = experiment.strategy.shares
        require(
            kind in ("any", shares),
            f"adversary {self.name} corrupts {kind}, but the clients of strategy {experiment.strategy.name} send "
            f"{shares}",
        )
        self._check_unread(experiment)
        self._check_from_round(experiment)
        count = malicious_count(experiment.num_clients, self.fraction)
        require(  # 0 itself is a sweep's honest point; a share that rounds to no client is a typo's
            self.fraction == 0.0 or count > 0,
            f"adversary.fraction={self.fraction} of num_clients={experiment.num_clients} is no client "
            f"(round(fraction * num_clients) = 0), so adversary {self.name} would attack nobody: raise "
            "adversary.fraction, or set it to 0 for an honest run",
        )

    def _check_from_round(self, experiment: ExperimentConfig) -> None:
        """A ``from_round`` after 1 needs a behaviour that rewrites each round's own answers, and a round of the run."""
        from fl_kd.kd.adversary.behaviours import ADVERSARIES, Behaviour
        from fl_kd.kd.adversary.collusion import Colluding
        from fl_kd.kd.adversary.references import Absent

        if self.from_round == 1:
            return
        behaviour = ADVERSARIES.get(self.name)
        require(
            behaviour.poison_labels is Behaviour.poison_labels
            and not issubclass(behaviour, (Colluding, Absent))
            and self.name != NONE,
            f"adversary.from_round={self.from_round} with adversary {self.name}: only a behaviour that rewrites its "
            "own answers can start late (not one that poisons the private labels, colludes through the server, or "
            "stays away)",
        )
        require(
            self.from_round <= experiment.strategy.rounds,
            f"adversary.from_round={self.from_round} is after the last round (strategy.rounds="
            f"{experiment.strategy.rounds}): the malicious clients would never misbehave",
        )

    def _check_unread(self, experiment: ExperimentConfig) -> None:
        """A setting changed from the behaviour's default that the behaviour does not read in this run would be
        dropped without a word (a run that looks like a variant of the attack, and is the attack as it stands)."""
        from fl_kd.kd.adversary.behaviours import ADVERSARIES

        defaults = behaviour_defaults(self.name)
        for key, why in sorted(ADVERSARIES.get(self.name).unread(self, experiment).items()):
            value = getattr(self, key)
            require(
                value == defaults[key],
                f"adversary.{key}={value} would be dropped: {why}. Leave it at its default ({defaults[key]}), or "
                "choose what reads it",
            )


#: The settings that tune a behaviour (every field but ``name``, ``fraction`` and ``from_round``); each behaviour
#: reads only some.
BEHAVIOUR_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in fields(AdversaryConfig) if f.name not in ("name", "fraction", "from_round")
)


def behaviour_defaults(name: str) -> dict[str, Any]:
    """The settings behaviour ``name`` starts from (:meth:`AdversaryConfig.defaults`, without building one)."""
    values: dict[str, Any] = {f.name: f.default for f in fields(AdversaryConfig) if f.name in BEHAVIOUR_SETTINGS}
    return {**values, **BEHAVIOUR_DEFAULTS.get(name, {})}


def malicious_count(num_clients: int, fraction: float) -> int:
    """How many of ``num_clients`` misbehave at ``fraction``: ``round(fraction * num_clients)``, halves up."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    # In decimals as written (0.29 * 50 is 14.499999999999998 in binary floating point, and should give 15).
    return min(num_clients, int(Decimal(repr(float(fraction))) * num_clients + Decimal("0.5")))


def malicious_clients(seed: int, num_clients: int, fraction: float) -> tuple[int, ...]:
    """The malicious client ids, sorted: :func:`malicious_count` of them drawn by ``(seed, "adversary")``.

    The draw does not depend on the behaviour, so runs of different attacks at one fraction corrupt the same clients.
    """
    count = malicious_count(num_clients, fraction)
    rng = np.random.default_rng(derive_seed(seed, "adversary"))
    return tuple(sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False)))


def malicious_of(cfg: ExperimentConfig) -> tuple[int, ...]:
    """The malicious client ids of a run (none when ``adversary.name`` is "none")."""
    adversary = cfg.adversary
    if adversary.name == NONE:
        return ()
    return malicious_clients(cfg.seed, cfg.num_clients, adversary.fraction)
