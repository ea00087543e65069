"""What the robustness benchmark runs: methods x adversaries x fractions x seeds, as Hydra overrides of ``fl-kd-sim``.

Logit attacks go to the strategies whose clients send logits, weight attacks to those that send weights, and the
data attacks (``label_flip``, ``targeted``) and ``free_rider`` to every one (``AdversaryConfig.check_experiment``
decides, so the grid cannot list a pair the config would refuse). Fraction 0 is one honest run per method and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.knowledge.grid import overrides_through
from fl_kd.kd.adversary import ADVERSARIES, NONE
from fl_kd.kd.adversary.config import malicious_count
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.simulations.config import STRATEGY_PRESETS

#: Fashion-MNIST, 20 clients in three tiers, 1,000 labelled transfer samples, rounds before the last evaluated on a
#: fixed 2,000-image test subset.
COMMON: tuple[str, ...] = (
    "dataset=fashion_mnist",
    "num_clients=20",
    "device_profile=three_tier_fmnist",
    "transfer.labelled=1000",
    "evaluation.test_samples=2000",
)

#: A seconds-long end-to-end check (``--quick``): digits, 6 clients, tiny models.
QUICK: tuple[str, ...] = (
    "dataset=digits",
    "num_clients=6",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "transfer.labelled=100",
    "partition.min_size=20",
)

#: fl-kd's selective KD through the knowledge benchmark's ``+learned_trust`` step (per-client, per-class trust
#: fitted on a held-out labelled slice, applied to unlabelled samples), with its 10,000 unlabelled samples.
LEARNED: tuple[str, ...] = (*overrides_through("+learned_trust"), "transfer.unlabelled=10000")

#: An unlabelled public part of 2,000 samples beside the 1,000 labelled ones, for the logit-sharing peers.
PUBLIC_UNLABELLED = "transfer.unlabelled=2000"

#: FedMD with per-class trust and that unlabelled part.
FEDMD_TRUST_UNLABELLED: tuple[str, ...] = ("strategy=fedmd", "strategy.aggregation=trust", PUBLIC_UNLABELLED)

#: The knowledge benchmark's FedGEMS (learned trust, 5,000 unlabelled samples a round, a teacher cache of 3 rounds)
#: with its 10,000 unlabelled samples, and the same with the label-free consensus screen.
PLUS: tuple[str, ...] = ("strategy=fedgems_plus", "transfer.unlabelled=10000")
PLUS_CONSENSUS: tuple[str, ...] = (*PLUS, "strategy.consensus_z=3")
#: The combiner's probability floor, its trimmed product, and the consensus screen's confidence test.
FLOOR = "strategy.learned_prob_floor=0.01"
TRIM = "strategy.learned_trim=3"
CONFIDENCE = "strategy.consensus_confidence=true"
#: The consensus screen's raise test, against liars that name their honest class and lift another.
RAISE = "strategy.consensus_raise=true"

#: Method name -> its strategy overrides. FedAvg averages one architecture, so it runs the homogeneous profile.
METHODS: dict[str, tuple[str, ...]] = {
    "fedgems": ("strategy=fedgems",),
    "fedgems_uniform": ("strategy=fedgems", "strategy.weighting=correct_uniform"),
    "fedmd": ("strategy=fedmd",),
    "fedmd_trust": ("strategy=fedmd", "strategy.aggregation=trust"),
    # The same with an unlabelled public part of 2,000 samples, where a client that knows the trust can lie
    # unchecked; then with the consensus screen, whose reference is the labelled part: a client that agrees with
    # the others less on the unlabelled positions is left out of the round's fusion; and with its confidence test.
    "fedmd_trust_unlabelled": FEDMD_TRUST_UNLABELLED,
    "fedmd_trust_consensus": (*FEDMD_TRUST_UNLABELLED, "strategy.consensus_z=3"),
    "fedmd_trust_consensus_confidence": (
        *FEDMD_TRUST_UNLABELLED,
        "strategy.consensus_z=3",
        "strategy.consensus_confidence=true",
    ),
    "dsfl": ("strategy=dsfl",),
    "dsfl_median": ("strategy=dsfl", "strategy.aggregation=median"),
    # DS-FL with the same unlabelled part, without and with the consensus screen (its clients never read a label, so
    # the labelled and the unlabelled positions are alike to an honest one).
    "dsfl_unlabelled": ("strategy=dsfl", PUBLIC_UNLABELLED),
    "dsfl_consensus": ("strategy=dsfl", PUBLIC_UNLABELLED, "strategy.consensus_z=3"),
    "feddf": ("strategy=feddf",),
    "fedavg_mean": ("strategy=fedavg", "device_profile=homogeneous"),
    "fedavg_median": ("strategy=fedavg", "device_profile=homogeneous", "strategy.aggregation=median"),
    "fedavg_trimmed_mean": ("strategy=fedavg", "device_profile=homogeneous", "strategy.aggregation=trimmed_mean"),
    "fedavg_krum": ("strategy=fedavg", "device_profile=homogeneous", "strategy.aggregation=krum"),
    # Multi-Krum told how many clients lie (:data:`TOLD_COUNT`): the mean of the K - f updates of best Krum score.
    "fedavg_multi_krum": ("strategy=fedavg", "device_profile=homogeneous", "strategy.aggregation=multi_krum"),
    # FLTrust: each update weighted by its cosine with the server's own update on the labelled transfer set.
    "fedavg_fltrust": ("strategy=fedavg", "device_profile=homogeneous", "strategy.aggregation=fltrust"),
    # The same, its root a labelled set of the server's own that no client holds: the attacker that knows FLTrust
    # must approximate the server's update on the public labelled transfer set.
    "fedavg_fltrust_private": (
        "strategy=fedavg",
        "device_profile=homogeneous",
        "strategy.aggregation=fltrust",
        "transfer.server_private=1000",
    ),
    "fedgems_learned": LEARNED,
    # The same, with 1,000 canaries: labelled samples the server hides among the unlabelled ones (1,000 labels more).
    "fedgems_canaries": (*LEARNED, "strategy.canaries=1000"),
    # And each window of the latest rounds tested on its own too, against the liar that is honest first, then lies.
    "fedgems_canaries_burst": (*LEARNED, "strategy.canaries=1000", "strategy.canary_burst_z=2.5"),
    # The same with twice the canaries (2,000 labels more): about 200 a round to each client, not 100.
    "fedgems_canaries2000_burst": (*LEARNED, "strategy.canaries=2000", "strategy.canary_burst_z=2.5"),
    # And with each client's probabilities floored at 0.01 in the combiner, so that one lie cannot veto a class.
    "fedgems_robust": (*LEARNED, "strategy.canaries=1000", FLOOR),
    # And the burst test beside the floor: the floor bounds what a late liar teaches before its window shows it.
    "fedgems_robust_burst": (
        *LEARNED,
        "strategy.canaries=1000",
        FLOOR,
        "strategy.canary_burst_z=2.5",
    ),
    # The canaries with the knowledge benchmark's teacher cache (the teachers of the last 8 rounds distilled again):
    # a client the screen catches late is fused out of what it taught in the rounds before.
    "fedgems_canaries_cached": (*LEARNED, "strategy.canaries=1000", "strategy.unlabelled_cache=8"),
    # The knowledge benchmark's FedGEMS (``strategy=fedgems_plus``: learned trust, 5,000 unlabelled samples a round,
    # a teacher cache of 3 rounds), which the trust score of ``fedgems_learned`` exposes to the same attackers.
    "fedgems_plus": PLUS,
    # And with the consensus screen: a client that agrees with the others less where no label checks it is left out
    # of the unlabelled teacher, with no label spent.
    "fedgems_plus_consensus": PLUS_CONSENSUS,
    # And each window of the latest rounds tested on its own too, against the liar that is honest first, then lies.
    "fedgems_plus_consensus_burst": (*PLUS_CONSENSUS, "strategy.consensus_burst_z=3"),
    # And with each client's probabilities floored at 0.01 in the combiner, so that a lie the screen misses cannot
    # veto the truth where the clients are unsure.
    "fedgems_plus_consensus_floor": (*PLUS_CONSENSUS, FLOOR),
    # And with the floor and a trimmed product as well (the 3 lowest and 3 highest terms of each sample and class
    # left out): against the liars the screen cannot see, on a twentieth or where least sure, no few answers can
    # veto a class.
    "fedgems_plus_consensus_trimmed": (*PLUS_CONSENSUS, FLOOR, TRIM),
    # And with the screen's confidence test: a client that states its unlabelled answers surer than where labels
    # check it is left out too (a lie stated with certainty where it was unsure).
    "fedgems_plus_consensus_confidence": (*PLUS_CONSENSUS, CONFIDENCE),
    # And with the floor and the trimmed product too: against the liars that pass both tests (thin, or as wrong
    # where labels check them as elsewhere).
    "fedgems_plus_consensus_confidence_trimmed": (*PLUS_CONSENSUS, CONFIDENCE, FLOOR, TRIM),
    # And with the raise test beside both (``strategy=fedgems_plus_screened``): a client that lifts a class beside
    # its top one far above the others' mean more often where no label checks it is left out too.
    "fedgems_plus_consensus_raise": (*PLUS_CONSENSUS, CONFIDENCE, RAISE),
    # And both tests on windows of the latest rounds too.
    "fedgems_plus_consensus_confidence_burst": (*PLUS_CONSENSUS, CONFIDENCE, "strategy.consensus_burst_z=3"),
    # And with a trimmed product: the 3 lowest and 3 highest terms of each sample and class left out.
    "fedgems_trimmed": (
        *LEARNED,
        "strategy.canaries=1000",
        FLOOR,
        TRIM,
    ),
}

#: Attacks beside the registered behaviours: a name -> (behaviour, its settings). ``camouflage_p0.2`` lies on a
#: fifth of the unlabelled samples only; ``camouflage_mimic_p*`` also answers honestly where labels check it, so
#: that the canaries' screen sees only the share it poisons (the attacker that knows the screen);
#: ``camouflage_mimic_p0.2_coord`` lies with the other malicious clients on the same samples and names the same
#: wrong class there (the attacker that knows the trimmed product); ``camouflage_consistent_p0.2`` lies as often
#: where labels check it as elsewhere (the attacker that knows the consensus screen, which compares the two);
#: ``camouflage_mimic_unsure_p0.2`` lies where it is least sure, with its runner-up class (where honest clients
#: disagree too, so that the screen counts its lies among theirs); ``camouflage_mimic_unsure_swap_p0.2`` states each
#: such lie with its honest answer's confidence, ``camouflage_mimic_unsure_quantile_p0.2`` with that of its answers
#: at their 75% quantile where labels check it, and ``camouflage_mimic_unsure_traded_p0.2`` with those of its surest
#: honest answers, which take the lies' (the attackers that know the screen's confidence test);
#: ``camouflage_from3``, ``camouflage_mimic_p0.2_from3`` and ``camouflage_mimic_p0.1_from3`` answer honestly in rounds
#: 1-2 and attack from round 3 (the attackers that know the screens pool their evidence over rounds; the last also
#: lies too rarely for one round's canaries to show); ``camouflage_mimic_unsure_p0.2_from3`` is the liar where least
#: sure, late (against the confidence test, pooled and on windows); ``skewed_colluders_z6`` aims its lifts 6 standard
#: errors under the raise test's cut instead of 2 (the attacker that knows the raise test at one cut, more careful);
#: ``skewed_colluders_traded_p0.2`` lifts freely on the fifth of its answers where the colluders are least sure and
#: gives up lift on the rest, so that every cut of the raise test keeps at least its share (the attacker that knows
#: the four cuts); ``skewed_colluders_traded_swap_p0.2`` also keeps the confidence each of those answers stated (the
#: attacker that knows the four cuts and the confidence test).
MIMIC_P02 = ("adversary.poison_share=0.2", "adversary.checked=honest")
ATTACK_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "camouflage_p0.2": ("camouflage", ("adversary.poison_share=0.2",)),
    "camouflage_mimic_p0.2": ("camouflage", MIMIC_P02),
    "camouflage_mimic_p0.1": ("camouflage", ("adversary.poison_share=0.1", "adversary.checked=honest")),
    "camouflage_mimic_p0.2_coord": ("camouflage", (*MIMIC_P02, "adversary.coordinated=true")),
    "camouflage_mimic_p0.05": ("camouflage", ("adversary.poison_share=0.05", "adversary.checked=honest")),
    "camouflage_consistent_p0.2": ("camouflage", ("adversary.poison_share=0.2", "adversary.checked=poisoned")),
    "camouflage_mimic_unsure_p0.2": ("camouflage", (*MIMIC_P02, "adversary.poison_where=uncertain")),
    "camouflage_mimic_unsure_swap_p0.2": (
        "camouflage",
        (*MIMIC_P02, "adversary.poison_where=uncertain", "adversary.lie_as=swap"),
    ),
    "camouflage_mimic_unsure_quantile_p0.2": (
        "camouflage",
        (*MIMIC_P02, "adversary.poison_where=uncertain", "adversary.lie_as=quantile"),
    ),
    "camouflage_mimic_unsure_traded_p0.2": (
        "camouflage",
        (*MIMIC_P02, "adversary.poison_where=uncertain", "adversary.lie_as=traded"),
    ),
    "camouflage_mimic_skewed": (
        "camouflage",
        ("adversary.checked=honest", "adversary.lie_as=skewed", "adversary.coordinated=true"),
    ),
    "camouflage_mimic_unsure_skewed": (
        "camouflage",
        ("adversary.checked=honest", "adversary.lie_as=skewed", "adversary.poison_where=uncertain"),
    ),
    "skewed_colluders_z6": ("skewed_colluders", ("adversary.z=6",)),
    "skewed_colluders_traded_p0.2": (
        "skewed_colluders",
        ("adversary.poison_where=uncertain", "adversary.poison_share=0.2", "adversary.z=0"),
    ),
    "skewed_colluders_traded_swap_p0.2": (
        "skewed_colluders",
        ("adversary.poison_where=uncertain", "adversary.poison_share=0.2", "adversary.z=0", "adversary.lie_as=swap"),
    ),
    "camouflage_from3": ("camouflage", ("adversary.from_round=3",)),
    "camouflage_mimic_p0.2_from3": ("camouflage", (*MIMIC_P02, "adversary.from_round=3")),
    "camouflage_mimic_p0.1_from3": (
        "camouflage",
        ("adversary.poison_share=0.1", "adversary.checked=honest", "adversary.from_round=3"),
    ),
    "camouflage_mimic_unsure_p0.2_from3": (
        "camouflage",
        (*MIMIC_P02, "adversary.poison_where=uncertain", "adversary.from_round=3"),
    ),
}

#: The attackers that know selective KD and its screens, at 0.3: what the knowledge benchmark's FedGEMS faces.
CAMOUFLAGED = frozenset(
    (attack, 0.3)
    for attack in (
        "camouflage",
        "camouflage_mimic_p0.2",
        "camouflage_mimic_p0.2_coord",
        "camouflage_mimic_p0.05",
        "camouflage_consistent_p0.2",
        "camouflage_mimic_unsure_p0.2",
        "camouflage_mimic_unsure_swap_p0.2",
        "camouflage_mimic_unsure_quantile_p0.2",
        "camouflage_mimic_unsure_traded_p0.2",
        "camouflage_mimic_skewed",
        "camouflage_mimic_unsure_skewed",
        "skewed_colluders",
        "skewed_colluders_z6",
        "skewed_colluders_traded_p0.2",
        "skewed_colluders_traded_swap_p0.2",
        "camouflage_from3",
        "camouflage_mimic_p0.2_from3",
    )
)

#: The attackers the confidence test was built against, with 2 and with 10 liars of 20 (fractions 0.1 and 0.5).
FEWER_AND_MORE_LIARS = frozenset(
    (attack, fraction)
    for attack in (
        "camouflage",
        "camouflage_mimic_unsure_p0.2",
        "camouflage_mimic_unsure_quantile_p0.2",
        "camouflage_mimic_unsure_traded_p0.2",
    )
    for fraction in (0.1, 0.5)
)

#: The behaviour that is a reference, not an attack (the honest clients alone), run only where :data:`ONLY` pairs it
#: with a method: the most a defence of that method can give back, with as many liars as at that fraction.
ABSENT = "absent"

#: Variants run beside the grid, not through it, with the only (adversary, fraction) pairs they face: the trust score
#: of ``fedgems_learned`` and FedGEMS without confidence weighting (``fedgems_uniform``), each against the attacker
#: it was built for and the one that knows it (``camouflage``), and the canaries against ``camouflage`` and the
#: attackers that know them (``camouflage_p0.2``, ``camouflage_mimic_p*``), and both with the combiner's
#: probability floor (``fedgems_robust``) and a trimmed product (``fedgems_trimmed``).
ONLY: dict[str, frozenset[tuple[str, float]]] = {
    "fedgems_learned": frozenset(
        {
            ("confident_wrong", 0.3),
            ("camouflage", 0.3),
            ("camouflage_p0.2", 0.3),
            ("camouflage_mimic_p0.1", 0.3),
            ("camouflage", 0.5),
        }
    ),
    "fedgems_canaries": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2_from3", 0.3),
            ("camouflage_mimic_p0.1_from3", 0.3),
            ("camouflage_p0.2", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_mimic_p0.1", 0.3),
            ("camouflage", 0.5),
        }
    ),
    "fedgems_canaries_burst": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_mimic_p0.2_from3", 0.3),
            ("camouflage_mimic_p0.1_from3", 0.3),
        }
    ),
    "fedgems_canaries2000_burst": frozenset(
        {("camouflage_mimic_p0.2", 0.3), ("camouflage_mimic_p0.2_from3", 0.3), ("camouflage_mimic_p0.1_from3", 0.3)}
    ),
    "fedgems_canaries_cached": frozenset(
        {("camouflage", 0.3), ("camouflage_p0.2", 0.3), ("camouflage_mimic_p0.2", 0.3)}
    ),
    "fedgems_robust": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_mimic_p0.1", 0.3),
            ("camouflage_mimic_p0.2_coord", 0.3),
            ("camouflage", 0.5),
            ("camouflage_mimic_p0.2_from3", 0.3),
        }
    ),
    "fedgems_robust_burst": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_mimic_p0.2_from3", 0.3),
            ("camouflage_mimic_p0.1_from3", 0.3),
        }
    ),
    "fedgems_trimmed": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_mimic_p0.1", 0.3),
            ("camouflage_mimic_p0.2_coord", 0.3),
        }
    ),
    "fedgems_uniform": frozenset({("scaled_logits", 0.3), ("camouflage", 0.3), ("camouflage", 0.5)}),
    "fedgems_plus": frozenset({("confident_wrong", 0.3), ("random_logits", 0.3)}) | CAMOUFLAGED,
    "fedgems_plus_consensus": CAMOUFLAGED | {("camouflage_mimic_p0.1_from3", 0.3)},
    "fedgems_plus_consensus_burst": frozenset(
        {
            ("camouflage", 0.3),
            ("camouflage_mimic_p0.2", 0.3),
            ("camouflage_from3", 0.3),
            ("camouflage_mimic_p0.2_from3", 0.3),
            ("camouflage_mimic_p0.1_from3", 0.3),
            ("camouflage_mimic_p0.05", 0.3),
        }
    ),
    # Per-class trust and the screen on plain averaging, against the attackers that know them, with 6 and 10 liars
    # of 20, and beside the honest clients alone.
    **dict.fromkeys(
        ("fedmd_trust_unlabelled", "fedmd_trust_consensus", "fedmd_trust_consensus_confidence"),
        CAMOUFLAGED | {("camouflage", 0.5)} | {(ABSENT, fraction) for fraction in (0.3, 0.5)},
    ),
    **dict.fromkeys(
        ("dsfl_unlabelled", "dsfl_consensus"),
        frozenset({("camouflage", 0.3), ("camouflage", 0.5), *CAMOUFLAGED, (ABSENT, 0.3), (ABSENT, 0.5)}),
    ),
    "fedgems_plus_consensus_floor": CAMOUFLAGED,
    "fedgems_plus_consensus_trimmed": CAMOUFLAGED,
    "fedgems_plus_consensus_confidence_trimmed": CAMOUFLAGED,
    "fedgems_plus_consensus_raise": CAMOUFLAGED,
    "fedgems_plus_consensus_confidence": CAMOUFLAGED
    | FEWER_AND_MORE_LIARS
    | {(ABSENT, fraction) for fraction in (0.1, 0.3, 0.5)}
    | {("camouflage_mimic_unsure_p0.2_from3", 0.3)},
    "fedgems_plus_consensus_confidence_burst": frozenset(
        {("camouflage_mimic_unsure_p0.2", 0.3), ("camouflage_mimic_unsure_p0.2_from3", 0.3)}
    ),
}

#: Methods beside which the grid also runs the reference (:data:`ABSENT`) at every fraction: the weight-sharing
#: rules, whose attackers include colluders that hide inside the honest spread, so a drop is read against what the
#: honest clients reach alone.
REFERENCED = frozenset(
    {
        "fedavg_mean",
        "fedavg_median",
        "fedavg_trimmed_mean",
        "fedavg_krum",
        "fedavg_multi_krum",
        "fedavg_fltrust",
        "fedavg_fltrust_private",
    }
)

#: Methods told how many clients lie, as the Krum papers evaluate their rule: ``strategy.num_malicious`` is the
#: attack's count of malicious clients, capped at the most Krum accepts (K > 2f + 2 answers), so at fraction 0.5 it
#: is told 8 of the 10 liars among 20. The honest run (fraction 0) and the honest clients alone (:data:`ABSENT`,
#: whose liars never answer) are told 0: what the rule reaches when it leaves out exactly the liars.
TOLD_COUNT = frozenset({"fedavg_multi_krum"})


def told_count(num_clients: int, fraction: float) -> int:
    """Krum's ``f`` for a federation of ``num_clients`` with ``fraction`` of them malicious (see :data:`TOLD_COUNT`)."""
    return max(0, min(malicious_count(num_clients, fraction), (num_clients - 3) // 2))


FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5)


@dataclass(frozen=True)
class Job:
    """One run: ``method`` under ``adversary`` at ``fraction`` (``none`` at 0: the honest run), one seed."""

    method: str
    adversary: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        """Its folder name."""
        return f"{self.method}__{self.adversary}__{self.fraction:g}__seed{self.seed}"

    def overrides(self, quick: bool = False) -> list[str]:
        """Hydra overrides of this job (before seed and rounds)."""
        method = [o for o in METHODS[self.method] if not (quick and o.startswith("device_profile="))]
        behaviour, settings = ATTACK_VARIANTS.get(self.adversary, (self.adversary, ()))
        extra = [f"adversary={behaviour}", f"adversary.fraction={self.fraction}", *settings]
        common = QUICK if quick else COMMON
        if self.method in TOLD_COUNT:
            num_clients = int(next(o.split("=", 1)[1] for o in common if o.startswith("num_clients=")))
            told = 0 if self.adversary == ABSENT else told_count(num_clients, self.fraction)
            method.append(f"strategy.num_malicious={told}")
        return [*common, *method, *extra]


def attack_names() -> list[str]:
    """Every adversary the grid knows: the registered behaviours and :data:`ATTACK_VARIANTS`."""
    return [*ADVERSARIES.names(), *ATTACK_VARIANTS]


def fits(method: str, adversary: str) -> bool:
    """Whether ``adversary`` applies to the clients of ``method``'s strategy (logits, weights, or any)."""
    strategy = next(o.split("=", 1)[1] for o in METHODS[method] if o.startswith("strategy="))
    if strategy in STRATEGY_PRESETS:  # a preset shares what its algorithm shares
        strategy = STRATEGY_PRESETS[strategy]().name
    adversary = ATTACK_VARIANTS.get(adversary, (adversary, ()))[0]
    return ADVERSARIES.get(adversary).kind in ("any", get_algorithm(strategy).config_class.shares)


def allowed(method: str, adversary: str, fraction: float) -> bool:
    """Whether the grid runs ``method`` under ``adversary`` at ``fraction``: every fitting pair of a registered
    behaviour but the reference (run for :data:`REFERENCED` only), and for the methods of :data:`ONLY` their pairs
    alone."""
    if method not in ONLY:  # the attack variants aim at the variants' defences only
        reference_ok = adversary != ABSENT or method in REFERENCED
        return fits(method, adversary) and adversary not in ATTACK_VARIANTS and reference_ok
    return fits(method, adversary) and (adversary, fraction) in ONLY[method]


def plan(methods: list[str], adversaries: list[str], fractions: list[float], seeds: list[int]) -> list[Job]:
    """Every job, seed by seed (so an interrupted benchmark has whole seeds first), honest runs first."""
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(adversaries) - set(attack_names()))
    if unknown:
        raise ValueError(f"unknown methods or adversaries: {unknown}")
    jobs = []
    for seed in seeds:
        jobs += [Job(method, NONE, 0.0, seed) for method in methods]
        jobs += [
            Job(method, adversary, fraction, seed)
            for fraction in fractions
            for adversary in adversaries
            for method in methods
            if adversary != NONE and fraction > 0 and allowed(method, adversary, fraction)
        ]
    return jobs
