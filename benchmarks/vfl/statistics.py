"""Records of the VFL benchmark aggregated over seeds, and the views of AP that defences are compared by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import mean, mean_std
from benchmarks.vfl.grid import GRADIENT_ATTACKS
from benchmarks.vfl.run import dcs

Stat = tuple[float, float]
"""``(mean, std)`` over seeds."""

VIEWS = ("adaptive", "raw", "relabelled")
"""Which attacker a comparison assumes: adaptive AP, the naive attacker's raw AP, or the renaming attacker."""


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
        for runs in by_label.values():
            for run in runs:
                if (setting, int(run["seed"])) not in mp_star:
                    raise ValueError(f"no 'none' run for {setting} seed {run['seed']}: DCS needs MP*")
            stars = [mp_star[(setting, int(r["seed"]))] for r in runs]
            rows.append(_summarise_defence(setting, runs, stars))
        summary[setting] = rows
    return summary


def _summarise_defence(setting: str, runs: Sequence[Mapping[str, Any]], stars: Sequence[float]) -> dict[str, Any]:
    """One row of :func:`summarise`: the runs of one defence over seeds, with MP* of each seed."""
    attacks = list(runs[0]["attacks"])
    row: dict[str, Any] = {
        "setting": setting,
        "label": runs[0]["label"],
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
    row["t_dcs"] = mean_std([mean(v) for v in per_seed_dcs])
    # The AP that counts: per seed the highest adaptive AP over the suite, then its mean and std over seeds.
    worst = [max(v["ap_adaptive"] for v in r["attacks"].values()) for r in runs]
    row["worst_case"] = mean_std(worst)
    row["dcs_worst_case"] = mean_std([dcs(ap, r["mp"], s) for ap, r, s in zip(worst, runs, stars, strict=True)])
    gradient = [a for a in attacks if a in GRADIENT_ATTACKS]
    if gradient:
        row["worst_case_gradient"] = mean_std([max(r["attacks"][a]["ap_adaptive"] for a in gradient) for r in runs])
    return row


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Labels of the rows no other row beats on both mean MP (higher) and mean worst-case AP (lower), by AP."""
    front = []
    for row in rows:
        ap, mp = row["worst_case"][0], row["mp"][0]
        beaten = any(
            o["worst_case"][0] <= ap and o["mp"][0] >= mp and (o["worst_case"][0] < ap or o["mp"][0] > mp) for o in rows
        )
        if not beaten:
            front.append(row)
    return [r["label"] for r in sorted(front, key=lambda r: r["worst_case"][0])]


def chance(num_classes: int) -> float:
    """AP of guessing: 1/C for a recovery rate; 0.5 for a binary task (recovery or AUC)."""
    return 1.0 / num_classes


def row_by_defence(rows: Sequence[Mapping[str, Any]], defence: str) -> Mapping[str, Any] | None:
    """The first row of ``defence`` (CoAE and DCAE have one row each)."""
    return next((r for r in rows if r["defence"] == defence), None)


def _candidates(row: Mapping[str, Any], among: Sequence[str] | None) -> list[str]:
    """The attacks of ``row``, or those of them in ``among``; ``ValueError`` when none is left."""
    candidates = [a for a in row["attacks"] if among is None or a in among]
    if not candidates:
        raise ValueError(f"row {row['label']!r} has none of the attacks {among}")
    return candidates


def strongest(row: Mapping[str, Any], among: Sequence[str] | None = None) -> tuple[str, Stat]:
    """The attack with the highest mean adaptive AP in ``row`` (optionally only among ``among``)."""
    best = max(_candidates(row, among), key=lambda a: row["ap"][a][0])
    return best, row["ap"][best]


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
    best = max(_candidates(row, among), key=lambda a: effective_ap(row, a, view))
    return best, effective_ap(row, best, view)
