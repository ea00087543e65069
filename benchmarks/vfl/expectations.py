"""Verdicts on the CoAE claim, from the numbers: where confused labels beat DP noise, and where they do not."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import markdown_table
from benchmarks.vfl.grid import CONFUSION_DEFENCES, GRADIENT_ATTACKS, NOISE_DEFENCES, in_noise_sweep
from benchmarks.vfl.statistics import chance, row_by_defence, strongest_effective
from benchmarks.vfl.tables import pm

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
TARGET_AP_MARGIN = 0.10
"""Issue 11's target: the worst-case AP at most chance plus this (AUC 0.60 on a binary task)..."""
TARGET_MP_LOSS = {"multi-class": 0.02, "binary": 0.01}
"""...for at most this MP loss (2 points multi-class, 1 point binary)."""


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
    sweep = [r for r in rows if in_noise_sweep(r, noise)]
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


def expectations(
    summary: Mapping[str, Sequence[Mapping[str, Any]]], attacker_alone: Mapping[str, float] | None = None
) -> list[str]:
    """Markdown bullets stating, from the numbers, where the expectations hold and where they do not.

    ``attacker_alone``: per setting, model completion's mean AP without any training run (see ``target_lines``).
    """
    lines = _at_chance_lines(summary)
    table = _dp_table(summary)
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
    return lines + _unstopped_lines(summary) + ["", *target_lines(summary, attacker_alone)]


def target_lines(
    summary: Mapping[str, Sequence[Mapping[str, Any]]], attacker_alone: Mapping[str, float] | None = None
) -> list[str]:
    """Per setting: which defences keep the worst-case AP within the target at the allowed MP loss.

    Judged twice, over the whole suite and over the gradient attacks alone: model completion also reads what the
    attacker's own columns say about the label, which no defence of the gradients can hide. Where no defence meets
    the target, the closest on each side is named: the lowest worst case within the MP budget and the cheapest
    defence within the AP limit. With ``attacker_alone`` (model completion's AP on the attacker's raw columns, no
    training run) a third line judges what the protocol leaks: gradient attacks within the limit and model
    completion no better than the attacker alone; a setting whose attacker alone is above the limit is said to
    be out of reach of any defence over the whole suite.
    """
    lines = ["Target of issue 11 (worst-case adaptive AP ≤ chance + 0.10 at ≤ 2 pt MP loss; binary: ≤ 1 pt), on means:"]
    for setting, rows in summary.items():
        level = chance(rows[0]["num_classes"]) + TARGET_AP_MARGIN
        # A loss of exactly the budget (differences of rounded accuracies) is within it.
        budget = TARGET_MP_LOSS["binary" if rows[0]["num_classes"] == 2 else "multi-class"] + 1e-9
        for key, scope in (("worst_case", "every attack"), ("worst_case_gradient", "gradient attacks")):
            candidates = [r for r in rows if r["defence"] != "none" and key in r]
            if not candidates:
                continue
            meets = [r for r in candidates if r[key][0] <= level and r["mp_loss"][0] <= budget]
            head = f"- {setting}, {scope} (AP ≤ {level:.2f}, MP loss ≤ {100 * budget:.0f} pt): "
            if meets:
                lines.append(head + "**holds** for " + ", ".join(_point(r, key) for r in meets) + ".")
                continue
            within_budget = sorted((r for r in candidates if r["mp_loss"][0] <= budget), key=lambda r: r[key][0])
            within_ap = sorted((r for r in candidates if r[key][0] <= level), key=lambda r: r["mp_loss"][0])
            closest = [f"lowest AP within the MP budget {_point(within_budget[0], key)}"] if within_budget else []
            closest += [f"cheapest within the AP limit {_point(within_ap[0], key)}"] if within_ap else []
            lines.append(head + "**does not hold**" + (": " + "; ".join(closest) if closest else "") + ".")
        if attacker_alone is not None and setting in attacker_alone:
            lines.append(_protocol_leak_line(setting, rows, level, budget, attacker_alone[setting]))
    return lines


def _protocol_leak_line(
    setting: str, rows: Sequence[Mapping[str, Any]], level: float, budget: float, alone: float
) -> str:
    """The target on what the protocol adds: gradient attacks ≤ ``level``, model completion ≤ the attacker alone."""
    head = (
        f"- {setting}, what the protocol leaks (gradient attacks AP ≤ {level:.2f}, model completion ≤ the attacker "
        f"alone, {alone:.3f}, MP loss ≤ {100 * budget:.0f} pt): "
    )
    reach = (
        f" Over every attack the target is out of reach of any defence here: the attacker alone already reaches "
        f"{alone:.3f} > {level:.2f}."
        if alone > level
        else ""
    )
    candidates = [r for r in rows if r["defence"] != "none" and "worst_case_gradient" in r and "PMC" in r["ap"]]
    meets = [
        r
        for r in candidates
        if r["worst_case_gradient"][0] <= level and r["ap"]["PMC"][0] <= alone and r["mp_loss"][0] <= budget
    ]
    if meets:
        named = ", ".join(
            f"{_point(r, 'worst_case_gradient')} with model completion {r['ap']['PMC'][0]:.3f}" for r in meets
        )
        return head + "**holds** for " + named + "." + reach
    return head + "**does not hold**." + reach


def _point(row: Mapping[str, Any], key: str) -> str:
    """``label (AP a, MP loss l pt)`` for the worst case ``key`` of ``row``."""
    return f"{row['label']} (AP {pm(row[key])}, MP loss {100 * row['mp_loss'][0]:+.1f} pt)"


def _at_chance_lines(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Multi-class settings: do the confusion defences push every gradient attack to chance for at most
    ``MAX_MP_LOSS``? At chance means within ``CHANCE_MARGIN`` of 1/C on both sides and after the renaming: a rate
    pushed far below chance leaks the labels to an attacker who renames its guesses, and the adaptive attacks (ALI,
    GC) are the ones that know the defence, so a defence that beats DLI and BLI alone does not hold."""
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
            parts, leaks = [], []
            for attack in (a for a in GRADIENT_ATTACKS if a in row["ap"]):
                ap, below = row["ap"][attack][0], row["below_chance"][attack][0]
                relabelled = row["relabelled"].get(attack, (float("nan"), 0.0))[0]
                renamed_leaks = not math.isnan(relabelled) and relabelled > level + CHANCE_MARGIN
                if ap > level + CHANCE_MARGIN or below > CHANCE_MARGIN or renamed_leaks:
                    leaks.append(attack)
                detail = f"{attack} AP {pm(row['ap'][attack])}"
                if below > 0:
                    detail += f" (below chance by {below:.3f})"
                if not math.isnan(relabelled):
                    detail += f" ({relabelled:.3f} after relabelling)"
                parts.append(detail)
            holds = bool(parts) and not leaks and loss <= MAX_MP_LOSS
            verdict = "**holds**" if holds else "**does not hold**"
            missed = f"; not at chance: {', '.join(leaks)}" if leaks else ""
            lines.append(
                f"- {setting}, {row['label']}: every gradient attack, the adaptive ones included, at chance "
                f"(within {CHANCE_MARGIN:.2f} of {level:.2f}, after renaming too) at ≤ {100 * MAX_MP_LOSS:.0f} pt MP "
                f"loss — {verdict}: MP loss {100 * loss:+.1f} pt, " + "; ".join(parts) + missed + "."
            )
    return lines


def _dp_table(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[list[str]]:
    """Rows of the DP-against-CoAE table: per setting, attacker view and noise, the verdict of ``dp_versus``."""
    table = []
    for setting, rows in summary.items():
        views = [
            (GRADIENT_ATTACKS, "adaptive", "gradient (DLI/NS/DS/BLI/ALI/GC)"),
            (None, "adaptive", "all LI (with PMC)"),
        ]
        if rows[0]["num_classes"] > 2:
            views.append((GRADIENT_ATTACKS, "relabelled", "gradient, renaming attacker"))
        else:
            views.append((GRADIENT_ATTACKS, "raw", "gradient, naive attacker (no flip)"))
        for among, view, scope in views:
            for noise in NOISE_DEFENCES:
                found = dp_versus(rows, "coae", noise, among, view)
                if found is not None:
                    table.append([setting, scope, noise, found.reference, found.noise, f"**{found.verdict}**"])
    return table


def _unstopped_lines(summary: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Per setting and confusion defence: the attacks it does not stop, and binary guesses the attacker flips."""
    lines = []
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
