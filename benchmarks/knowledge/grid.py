"""What the knowledge benchmark runs: settings, methods and seeds, as Hydra overrides of ``fl-kd-sim``'s config."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_kd.kd.fedgems.extensions import EXTENSIONS

#: Every federated job shares these: Fashion-MNIST, 20 clients in three tiers, 1,000 labelled + 10,000 unlabelled
#: transfer samples, rounds before the last evaluated on a fixed 2,000-image test subset (the last on all 10,000).
COMMON: tuple[str, ...] = (
    "dataset=fashion_mnist",
    "num_clients=20",
    "device_profile=three_tier_fmnist",
    "transfer.labelled=1000",
    "transfer.unlabelled=10000",
    "evaluation.test_samples=2000",
)

#: Label skew of the private data.
SETTINGS: dict[str, tuple[str, ...]] = {
    "alpha0.5": ("partition=dirichlet", "partition.alpha=0.5"),
    "alpha0.1": ("partition=dirichlet", "partition.alpha=0.1"),
    "pathological": ("partition=pathological", "partition.classes_per_client=2"),
}


def strategy_overrides(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """``strategy.<field>=<value>`` overrides setting ``settings`` (booleans as Hydra writes them)."""
    return tuple(
        f"strategy.{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()
    )


#: The FedGEMS extensions (declared in :data:`fl_kd.kd.fedgems.extensions.EXTENSIONS`), cumulatively: each step adds one
#: to the previous (the ablation); the last is fl-kd's selective distillation as benchmarked
#: (``strategy=fedgems_plus``). The first is the FedGEMS of the paper. The learned trust fits one weight per client and
#: class on the held-out half of the labelled part; the teacher cache distils the clients' fused teachers of every
#: earlier round (8 rounds: the whole run) with this round's; the server shows the average of its weights (decay 0.99
#: per step, a horizon of about 100 steps; a round has 4 epochs of 16 labelled batches plus 16 batches per 1,000 cached
#: unlabelled samples, so 128 steps in round 1 and more later). Then the server asks 1,500 unlabelled samples a round
#: instead of 1,000: the uplink rises from 56 to 70 kB per client and round, still 22x below FedAvg of the server
#: model's 1,563 kB (the issue allows no less than 20x). Then each client answers and is evaluated with the equal
#: average of its weights over the last half of each training phase's steps. The next step bounds each client step's
#: gradient norm at 1 (most steps are below 1.5; the first steps of distilling ten classes into a client that fits two
#: reach 10-20, and could leave it a constant predictor for good; at 2 one high-tier client with two classes still ended
#: a one-class predictor). Then each client keeps a copy of its model as distilled, before fine-tuning, for inputs
#: beyond its own classes (it is scored on the global test set); the fine-tuned model goes on as before, so the server
#: and the own-data figures are those of the step before, bit for bit. Then each client keeps the server's knowledge
#: through its local training (each local step adds KD towards the server's last logits on a random transfer batch): a
#: client that trains on its own classes no longer unlearns the others before it answers (+0.2, +0.7 and +1.8 points on
#: the server at alpha 0.5, alpha 0.1 and with 2 classes per client, three seeds; 0.5 and 2.0 are extras). The next step
#: fine-tunes each client for two epochs after each distillation instead of one: the distillation of ten classes pulls a
#: client's model away from its own label mix, and the high tier, which trains three local epochs a round, did not win
#: it back in one. The next step distils only the cached teachers of the last 3 rounds instead of all 8: a teacher
#: fused from the clients of round 1 is right on fewer samples than one of round 7, and it still weighed as much
#: (+0.5, +0.2 and +0.3 points on the server at alpha 0.5, alpha 0.1 and with 2 classes per client, three seeds).
#: The next step asks 5,000 unlabelled samples a round instead of 1,500, answered as 8-bit log-probabilities (answers
#: no longer repeat their positions): 60 kB up per client and round instead of 70, and the cache of 3 rounds then
#: holds nearly all 10,000. The last step trains the server 8 epochs a round instead of 4: each epoch passes over the
#: labelled part and up to 10,000 cached teachers, and the server-alone baselines train 16 (+0.4, +0.2 and +0.3 points
#: on the server at alpha 0.5, alpha 0.1 and with 2 classes per client, three seeds).
ABLATION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fedgems_paper", ("strategy=fedgems",)),
    *((f"+{extension.name}", strategy_overrides(extension.settings)) for extension in EXTENSIONS),
)
FEDGEMS = "fedgems"
FEDGEMS_OVERRIDES: tuple[str, ...] = tuple(o for _, step in ABLATION for o in step)


def overrides_through(step: str) -> tuple[str, ...]:
    """FedGEMS' overrides up to and including the ablation step named ``step``."""
    names = [name for name, _ in ABLATION]
    return tuple(o for _, options in ABLATION[: names.index(step) + 1] for o in options)


#: The steps whose runs are planned in every setting, not only in alpha 0.5: what the learned trust, the cache and
#: the weight average each add where the skew is stronger.
LATE_STEPS: tuple[str, ...] = (
    "+client_finetune",
    "+learned_trust",
    "+teacher_cache",
    "+server_ema",
    "+unlabelled_1500",
    "+client_tail_average",
    "+client_clip",
    "+client_keep_distilled",
    "+client_anchor",
    "+client_finetune_2",
    "+teacher_cache_3",
    "+unlabelled_5000",
)
#: Late steps that also get the extra seeds in every setting: FedGEMS before its last steps, for three-seed comparisons.
SEEDED_STEPS: tuple[str, ...] = (
    "+unlabelled_1500",
    "+client_tail_average",
    "+client_clip",
    "+client_keep_distilled",
    "+client_anchor",
    "+client_finetune_2",
    "+teacher_cache_3",
    "+unlabelled_5000",
)
#: FedGEMS up to ``+client_finetune`` (before the learned trust): the options the baselines share with it (their
#: clients' and server's training), and the base of the variants below.
BASE_OVERRIDES: tuple[str, ...] = overrides_through("+client_finetune")

#: Options tried alone in every setting (the pathological one planned after its peers), each on top of a base:
#: ``(name, base, options)``, the base being :data:`BASE_OVERRIDES` (FedGEMS before the learned trust) or
#: FedGEMS before the server's weight average (``+teacher_cache``: the client-side variants ran before it came, and
#: are compared with that FedGEMS). A gate on the teacher's confidence; client reliability measured where clients never
#: trained on the label; clients that fine-tune a personal copy instead of their shared model (for one epoch, as
#: FedGEMS fine-tunes, or two), or keep a personal model across rounds pulled towards the shared one (Ditto), or
#: fine-tune nothing and add their own label prior to the shared model's logits on their own test set.
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fedgems+gate0.9", "+client_finetune", ("strategy.teacher_min_confidence=0.9",)),
    ("fedgems+reliability_held_out", "+client_finetune", ("strategy.reliability_on=held_out",)),
    ("fedgems+personal", "+teacher_cache", ("strategy.client_personal=true",)),
    ("fedgems+personal_ft2", "+teacher_cache", ("strategy.client_personal=true", "strategy.client_finetune_epochs=2")),
    ("fedgems+ditto", "+teacher_cache", ("strategy.client_personal=true", "strategy.client_personal_prox=0.1")),
    ("fedgems+prior", "+teacher_cache", ("strategy.client_finetune_epochs=0", "strategy.client_personal_prior=true")),
)
VARIANT_BASES: dict[str, tuple[str, ...]] = {
    "+client_finetune": BASE_OVERRIDES,
    "+teacher_cache": overrides_through("+teacher_cache"),
}
#: Variants that get the extra seeds too: the personal models are the candidates for FedGEMS' client side (the
#: shared model is FedGEMS' own, so only the clients' figures can differ), and one seed cannot tell.
SEEDED_VARIANTS: tuple[str, ...] = ("fedgems+personal", "fedgems+ditto", "fedgems+prior")

#: Peers, with their paper's mechanism and the defaults of ``conf/strategy``. FedAvg averages one architecture, so
#: under three tiers it runs twice: on the server model, which every client trains (``fedavg_server_model``, the
#: compute-unrealistic reference: a low-tier device trains a 390k-parameter model), and on the low tier's model,
#: the largest one every device affords (``fedavg_low_tier``).
PEERS: tuple[str, ...] = ("feddf", "dsfl", "fedet", "fedmd", "fedavg_low_tier", "fedavg_server_model")
COSTLY_PEER = "fedavg_server_model"
#: Peers that run a strategy of another name: ``fedavg_low_tier`` is plain FedAvg in the device profile whose every
#: tier trains the low tier's model (each tier keeps its epochs, batch size and learning rate).
PEER_STRATEGIES: dict[str, tuple[str, ...]] = {
    "fedavg_low_tier": (
        "strategy=fedavg",
        "device_profile.tiers.mid.model=cnn_tiny",
        "device_profile.tiers.high.model=cnn_tiny",
    ),
}

#: Compute cuts of peers whose defaults were set for a 300-sample transfer set, stated in the report: per round,
#: FedDF would distil 20 + 5 x 3 epochs and Fed-ET 4 epochs over all 11,000 transfer inputs (minutes per round each
#: on one core); FedMD scores a per-round sample as in its paper (which draws 5,000), here 2,000 like FedGEMS'
#: 1,000 labelled + 1,000 unlabelled. DS-FL and FedAvg keep their defaults.
PEER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "feddf": ("strategy.server_epochs=2", "strategy.distill_epochs=1"),
    "fedet": ("strategy.server_epochs=1",),
    "fedmd": ("strategy.public_per_round=2000",),
}
#: What every peer's clients and the local-only clients share with FedGEMS' clients: the bound on each step's
#: gradient norm is an SGD setting of every strategy (:class:`~fl_kd.kd.algorithm.SGDStrategyConfig`), not part of
#: FedGEMS' method, and it lifts the peers too (FedAvg of the server model at alpha 0.5: 0.8408 against 0.8215
#: without it, three seeds).
CLIENT_BOUND_OVERRIDES: tuple[str, ...] = dict(ABLATION)["+client_clip"]

SEEDS: tuple[int, ...] = (0, 1, 2)
EXTRA_SEEDS: tuple[int, ...] = SEEDS[1:]

#: Baselines that need no client and so no partition: run once per seed, reported under every setting.
SHARED_SETTING = "any"


@dataclass(frozen=True)
class Job:
    """One run of the benchmark.

    Attributes
    ----------
    method : str
        ``fedgems``, a peer, an ablation step, or a baseline (``local_only``, ``transfer_only``, ``pseudo_label``,
        ``ceiling``).
    kind : str
        How to run it: ``federated``, or the baseline's name.
    setting : str
        A key of :data:`SETTINGS`, or :data:`SHARED_SETTING`.
    seed : int
    overrides : tuple[str, ...]
        Hydra overrides on top of :data:`COMMON`, the setting and the seed (rounds come from the command line).
    """

    method: str
    kind: str
    setting: str
    seed: int
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Folder name, unique in the grid."""
        return f"{self.setting}/{self.method}/seed{self.seed}".replace("+", "plus_")

    def hydra_overrides(self) -> list[str]:
        """Every override of this job, setting included (a shared baseline takes the first setting's split)."""
        setting = SETTINGS[self.setting] if self.setting in SETTINGS else SETTINGS[next(iter(SETTINGS))]
        return [*COMMON, *setting, *self.overrides]


def federated(method: str, setting: str, seed: int) -> Job:
    """FedGEMS with every extension, or a peer with its defaults, its compute cuts and FedGEMS' client bound."""
    if method == FEDGEMS:
        return Job(method, "federated", setting, seed, FEDGEMS_OVERRIDES)
    strategy = PEER_STRATEGIES.get(method, (f"strategy={method}",))
    overrides = (*strategy, *PEER_OVERRIDES.get(method, ()), *CLIENT_BOUND_OVERRIDES)
    return Job(method, "federated", setting, seed, overrides)


def ablation_jobs(setting: str = "alpha0.5", seed: int = 0, steps: Sequence[str] | None = None) -> list[Job]:
    """Every cumulative step of :data:`ABLATION` but the last (which is :func:`federated` ``fedgems``).

    ``steps``: only the steps of these names (all by default).
    """
    jobs: list[Job] = []
    overrides: tuple[str, ...] = ()
    for name, step in ABLATION[:-1]:
        overrides = (*overrides, *step)
        if steps is None or name in steps:
            jobs.append(Job(name, "federated", setting, seed, overrides))
    return jobs


def variant_jobs(seed: int = 0, names: Sequence[str] | None = None) -> list[Job]:
    """Each of :data:`VARIANTS` (or those in ``names``) in every setting."""
    return [
        Job(name, "federated", setting, seed, (*VARIANT_BASES[base], *extra))
        for setting in SETTINGS
        for name, base, extra in VARIANTS
        if names is None or name in names
    ]


#: FedGEMS' server settings that the server-alone baselines share with it, so that they differ from it only by the
#: clients' knowledge: the server's weight average (which lifts the transfer-only server by about a point) and, for
#: self-training, as many unlabelled samples a round as FedGEMS asked before ``+unlabelled_5000`` (1,500; 5,000 is an
#: extra).
SERVER_ALONE_OVERRIDES: tuple[str, ...] = dict(ABLATION)["+server_ema"]
#: The server-alone baselines train 16 epochs a round, where FedGEMS' server trains 8: each of its epochs passes over
#: up to 11,000 samples (the labelled part and the cached teachers), theirs over 1,000 (with self-training at most
#: 2,500), and at 4 they stop short of their plateau (transfer-only, seed 0, 8 rounds: 0.7956 at 4 epochs a round,
#: 0.8253 at 8, 0.8309 at 16, 0.8323 at 32). A baseline is compared where it stops gaining, not where FedGEMS'
#: setting cuts it.
SERVER_ALONE_EPOCHS: tuple[str, ...] = ("strategy.server_epochs=16",)
#: Clients alone train as FedGEMS' clients do before its first server-side step, with its client bound.
LOCAL_ONLY_OVERRIDES: tuple[str, ...] = (*BASE_OVERRIDES, *CLIENT_BOUND_OVERRIDES)
PSEUDO_LABEL_OVERRIDES: tuple[str, ...] = (
    *BASE_OVERRIDES,
    *SERVER_ALONE_OVERRIDES,
    *dict(ABLATION)["+unlabelled_1500"],
    *SERVER_ALONE_EPOCHS,
)


def local_only_job(setting: str, seed: int) -> Job:
    """The clients of ``setting`` alone, each training on its private data only."""
    return Job("local_only", "local_only", setting, seed, LOCAL_ONLY_OVERRIDES)


def baseline_jobs(seed: int) -> list[Job]:
    """The server alone (labelled part; labelled part plus self-pseudo-labels) and clients alone per setting."""
    jobs = [
        Job(
            "transfer_only",
            "transfer_only",
            SHARED_SETTING,
            seed,
            ("strategy=fedgems", *SERVER_ALONE_OVERRIDES, *SERVER_ALONE_EPOCHS),
        ),
        Job("pseudo_label", "pseudo_label", SHARED_SETTING, seed, PSEUDO_LABEL_OVERRIDES),
    ]
    return jobs + [local_only_job(setting, seed) for setting in SETTINGS]


def base_job(method: str, setting: str, seed: int) -> Job:
    """The grid's job of ``method`` (FedGEMS, a peer, an ablation step or a baseline) in ``setting`` at ``seed``."""
    if method in ("transfer_only", "pseudo_label"):
        return next(job for job in baseline_jobs(seed) if job.method == method)
    if method == "local_only":
        return local_only_job(setting, seed)
    if method in dict(ABLATION) and method != ABLATION[-1][0]:
        return Job(method, "federated", setting, seed, overrides_through(method))
    return federated(method, setting, seed)


@dataclass(frozen=True)
class Extra:
    """A row beside its base method's in the tables: the base's jobs with overrides left out or added.

    Extras answer a question about a verdict (does a compute cut or the client bound cost a peer, is a baseline at
    its plateau, would FedGEMS' server gain from more epochs). They are not planned unless asked
    (``--extras``), and a finished one is reported whenever the benchmark writes its section.

    Attributes
    ----------
    method : str
        Name of its jobs and run folders.
    label : str
        Its row's name in the tables.
    base : str
        The method whose jobs it varies (see :func:`base_job`).
    drop, add : tuple[str, ...]
        Overrides of the base left out, then overrides added (the last of a key wins).
    settings, seeds : tuple
        Where it runs (a shared baseline runs once per seed whatever the settings).
    """

    method: str
    label: str
    base: str
    drop: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    settings: tuple[str, ...] = tuple(SETTINGS)
    seeds: tuple[int, ...] = SEEDS

    def jobs(self) -> list[Job]:
        """Its jobs, one per setting (once for a shared baseline) and seed."""
        found: list[Job] = []
        for setting in self.settings:
            for seed in self.seeds:
                base = base_job(self.base, setting, seed)
                overrides = (*(o for o in base.overrides if o not in self.drop), *self.add)
                found.append(Job(self.method, base.kind, base.setting, seed, overrides))
        return list(dict.fromkeys(found))


#: The low tier on ``cnn_small`` (6,138 parameters instead of 1,922) and the mid tier on ``cnn_medium`` (24,058
#: instead of 6,138), each tier keeping its epochs, batch size and learning rate.
LARGER_CLIENT_TIERS: tuple[str, ...] = (
    "device_profile.tiers.low.model=cnn_small",
    "device_profile.tiers.mid.model=cnn_medium",
)

#: The server trains on images shifted by up to 2 pixels each way and mirrored left-right half the time.
SERVER_AUGMENT: tuple[str, ...] = ("strategy.server_augment_shift=2", "strategy.server_augment_mirror=true")

#: The augmented extras: name, base and where each runs (the :class:`Extra` fields it sets).
AUGMENTED: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("transfer_only", "transfer_only", {}),
    ("pseudo_label", "pseudo_label", {}),
    (FEDGEMS, "+client_finetune_2", {"settings": ("alpha0.5",), "seeds": (0,)}),
)

#: The rows that vary a method of the grid, each with the question it answers.
EXTRAS: tuple[Extra, ...] = (
    # Would FedGEMS' server gain from training as long as the server-alone baselines do? (Run on FedGEMS before the
    # anchor.)
    Extra(
        "fedgems_server16",
        "+client_keep_distilled, 16 server epochs",
        "+client_keep_distilled",
        add=SERVER_ALONE_EPOCHS,
    ),
    # The weight of the server's knowledge in the clients' local training, around FedGEMS' 1.0 (run before the
    # longer fine-tuning).
    *(
        Extra(
            f"fedgems_anchor{weight:g}",
            f"+client_anchor at {weight:.1f}",
            "+client_anchor",
            add=(f"strategy.client_anchor={weight}",),
        )
        for weight in (0.5, 2.0)
    ),
    # Is the clients' knowledge held back by their models' size? FedGEMS with the low tier on the mid tier's model
    # and the mid tier on the high tier's (4x and 4x the parameters; the server stays 16x the largest). (Run before
    # the shorter teacher cache.)
    Extra(
        "fedgems_larger_clients",
        "+client_finetune_2, larger low and mid tiers",
        "+client_finetune_2",
        add=LARGER_CLIENT_TIERS,
        settings=("alpha0.5",),
        seeds=(0,),
    ),
    # The client bound at 2 instead of 1 (FedGEMS before its kept copy, whose own-data and server figures it shares).
    Extra("fedgems_bound2", "fedgems, bound 2.0", "+client_clip", add=("strategy.client_max_grad_norm=2.0",)),
    # What the grid's compute cut costs FedDF.
    Extra(
        "feddf_uncut",
        "feddf, 20 server and 5 distillation epochs",
        "feddf",
        drop=PEER_OVERRIDES["feddf"],
        settings=("alpha0.5",),
        seeds=(0,),
    ),
    # DS-FL with the paper's entropy reduction aggregation (a softmax of the averaged probabilities) instead of
    # fl-kd's default sharpening by a power (``strategy.era``).
    Extra(
        "dsfl_paper_era",
        "dsfl, the paper's ERA (softmax of the average)",
        "dsfl",
        add=("strategy.era=softmax",),
        settings=("alpha0.5",),
        seeds=(0,),
    ),
    # What the client bound, an SGD setting of every strategy, gives each peer and local-only training.
    *(
        Extra(
            f"{peer}_unbounded",
            f"{peer}, unbounded",
            peer,
            drop=CLIENT_BOUND_OVERRIDES,
            seeds=SEEDS if peer == COSTLY_PEER else (0,),
        )
        for peer in PEERS
    ),
    Extra("local_only_unbounded", "local_only, unbounded", "local_only", drop=CLIENT_BOUND_OVERRIDES),
    # Does FedGEMS' lead over the server alone survive a server that trains on shifted and mirrored images? The
    # server-alone baselines with that augmentation (three seeds, as in the tables), and FedGEMS with it (seed 0; run
    # before the shorter teacher cache).
    *(
        Extra(f"{name}_augmented", f"{base}, shifted and mirrored", base, add=SERVER_AUGMENT, **where)
        for name, base, where in AUGMENTED
    ),
    # Self-training on as many unlabelled samples a round as FedGEMS asks since ``+unlabelled_5000`` (5,000; the row
    # `pseudo_label` has 1,500, FedGEMS' count before it).
    Extra(
        "pseudo_label_u5000", "pseudo_label, 5,000 a round", "pseudo_label", add=("strategy.unlabelled_per_round=5000",)
    ),
    # FedGEMS asking all 10,000 unlabelled samples every round (each teacher this round's), answered as 5-bit
    # log-probabilities: 68.75 kB up per client and round against 60 kB for 5,000 as uint8 (22.7x below FedAvg of
    # the server model). Run on FedGEMS before its server trained 8 epochs a round.
    Extra(
        "fedgems_u10000",
        "+unlabelled_5000, 10,000 a round as uint5",
        "+unlabelled_5000",
        add=("strategy.unlabelled_per_round=10000", "strategy.logits_dtype=uint5"),
    ),
    # Does the label-free consensus screen with its confidence test (off in FedGEMS' rows, advised where clients
    # cannot all be trusted) screen an honest client of this grid, and so cost FedGEMS anything when nobody lies?
    Extra(
        "fedgems_screened",
        "fedgems, consensus screen and confidence test",
        FEDGEMS,
        add=("strategy.consensus_z=3", "strategy.consensus_confidence=true"),
    ),
    # Does the raise test (against liars that name their honest class and lift another) screen an honest client of
    # this grid over 8 rounds?
    Extra(
        "fedgems_screened_raise",
        "fedgems, consensus screen, confidence and raise tests",
        FEDGEMS,
        add=("strategy.consensus_z=3", "strategy.consensus_confidence=true", "strategy.consensus_raise=true"),
    ),
    # What the learned combiner's floor and trimmed product (which bound the liars the agreement tests cannot see in
    # the robustness grid's 3-round runs) cost FedGEMS over 8 rounds when nobody lies.
    Extra(
        "fedgems_trimmed",
        "fedgems, probability floor 0.01 and trimmed product 3",
        FEDGEMS,
        add=("strategy.learned_prob_floor=0.01", "strategy.learned_trim=3"),
    ),
    # The learned trust fitted on 800 of the 1,000 labels instead of 500 (200 left for the cross-entropy): at alpha
    # 0.5, seeds 0-2, its teacher led by about a point and its server by 0.15 on the mean (the record of 2026-12-07);
    # alpha 0.1 and 2 classes per client not run yet.
    Extra("fedgems_trust_800", "fedgems, trust fitted on 800 labels", FEDGEMS, add=("strategy.held_out_fraction=0.8",)),
    # The same, with the server trained on all 1,000 labels (the clients then leave the 800 out of what they learn
    # from it): is it the 200 labels left for the server's cross-entropy that hold it under its teacher? No: at
    # alpha 0.5, seeds 0-2, +0.33 points over the row above, still at its teacher (the record of 2026-12-07, 18:30);
    # at alpha 0.1, seed 0, +1.1 over `fedgems` beside it (the record of 2026-12-08).
    Extra(
        "fedgems_trust_800_server_labels",
        "fedgems, trust fitted on 800 labels, server trained on all 1,000",
        FEDGEMS,
        add=("strategy.held_out_fraction=0.8", "strategy.held_out_server_labels=true"),
    ),
    # The server-alone baselines at 4 epochs a round (FedGEMS' server's before its last step), with and without the
    # weight average.
    *(
        Extra(f"{baseline}{suffix}", f"{baseline}, 4 epochs a round{words}", baseline, drop, settings=("alpha0.5",))
        for baseline in ("transfer_only", "pseudo_label")
        for suffix, words, drop in (
            ("_epochs4", "", SERVER_ALONE_EPOCHS),
            ("_epochs4_no_average", ", without average", (*SERVER_ALONE_EPOCHS, *SERVER_ALONE_OVERRIDES)),
        )
    ),
)


def extra_jobs() -> list[Job]:
    """Every job of :data:`EXTRAS`."""
    return [job for extra in EXTRAS for job in extra.jobs()]


#: What issue 9 asks the benchmark to run: FedGEMS, every peer and the baselines (the centralised ceiling, the server
#: alone on the transfer set with and without its own pseudo-labels, local-only clients). The ablation steps, the
#: variants and the extras are the benchmark's own questions on top.
REQUIRED_METHODS: frozenset[str] = frozenset(
    {FEDGEMS, *PEERS, "transfer_only", "pseudo_label", "local_only", "ceiling"}
)


def plan(best_peer: Mapping[str, str], required_only: bool = False) -> list[Job]:
    """Every job, most important first; ``best_peer`` (setting -> peer) adds that peer's extra seeds once known.

    ``required_only`` keeps the jobs of :data:`REQUIRED_METHODS`, in the same order.

    Order: seed 0 of FedGEMS, the baselines and the peers in alpha 0.5, then in alpha 0.1, then the ablation and the
    variants, then pathological, then the late ablation steps (:data:`LATE_STEPS`) outside alpha 0.5 (FedAvg of
    the server model waits: by far the dearest run, and its uplink is known without running it); FedGEMS' extra
    seeds with those of :data:`SEEDED_STEPS` and their local-only baselines; the best peer's extra seeds; those of
    :data:`SEEDED_VARIANTS`; FedAvg of the server model; the centralised ceiling. A cut run therefore loses the
    least important results.
    """
    shared, local = baseline_jobs(0)[:2], baseline_jobs(0)[2:]
    dirichlet = [job for job in variant_jobs() if job.setting != "pathological"]
    jobs: list[Job] = []
    for index, (setting, local_job) in enumerate(zip(SETTINGS, local, strict=True)):
        if index == 2:
            jobs += ablation_jobs() + dirichlet
        jobs += [federated(FEDGEMS, setting, 0), *shared, local_job]
        jobs += [federated(peer, setting, 0) for peer in PEERS if peer != COSTLY_PEER]
    jobs += [job for job in variant_jobs() if job not in dirichlet]
    jobs += [job for setting in SETTINGS if setting != "alpha0.5" for job in ablation_jobs(setting, steps=LATE_STEPS)]
    for seed in EXTRA_SEEDS:
        for setting in SETTINGS:
            jobs += [
                federated(FEDGEMS, setting, seed),
                *ablation_jobs(setting, seed, steps=SEEDED_STEPS),
                local_only_job(setting, seed),
            ]
        jobs += baseline_jobs(seed)[:2]
    for setting, peer in best_peer.items():
        jobs += [federated(peer, setting, seed) for seed in EXTRA_SEEDS]
    jobs += [job for seed in EXTRA_SEEDS for job in variant_jobs(seed, SEEDED_VARIANTS)]
    jobs += [federated(COSTLY_PEER, setting, 0) for setting in SETTINGS]
    jobs.append(Job("ceiling", "ceiling", SHARED_SETTING, 0))
    jobs = list(dict.fromkeys(jobs))
    return [job for job in jobs if job.method in REQUIRED_METHODS] if required_only else jobs


def choose_best_peer(final_server_acc: Mapping[str, float]) -> str | None:
    """The peer with the highest final server accuracy among those that have one (FedMD has no server model)."""
    finite = {peer: acc for peer, acc in final_server_acc.items() if math.isfinite(acc)}
    return max(finite, key=lambda peer: (finite[peer], peer)) if finite else None


def resolved(overrides: Sequence[str]) -> dict[str, str]:
    """Hydra overrides as the settings they leave: ``key -> value``, the last one of a key winning."""
    settings: dict[str, str] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        settings[key] = value
    return settings


def select(jobs: Sequence[Job], only: Sequence[str]) -> list[Job]:
    """Jobs whose name contains any of ``only`` (all when empty)."""
    return [job for job in jobs if not only or any(part in job.name for part in only)]
