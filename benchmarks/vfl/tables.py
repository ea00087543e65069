"""The VFL report's tables of one setting: MP and AP, raw or below-chance AP, DCS; ``mean±std`` cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import markdown_table
from benchmarks.vfl.statistics import Stat, pareto_front, strongest


def pm(stat: Stat, digits: int = 3) -> str:
    """``mean±std`` with ``digits`` decimals."""
    return f"{stat[0]:.{digits}f}±{stat[1]:.{digits}f}"


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
            "guessed classes, fitted on every scored label: an upper bound of what an attacker who learns the class "
            "mapping from a few known labels reaches (ALI and GC fit it on those few):"
        )
    third = markdown_table(
        ["Defence", *[f"DCS {a}" for a in attacks], "T-DCS (LI)"],
        [[r["label"], *[pm(r["dcs"][a]) for a in attacks], pm(r["t_dcs"])] for r in rows],
    )
    return "\n\n".join([first, second_title, second, "DCS (adaptive AP; MP* = no-defence MP, same seed):", third])


def worst_case_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """MP, MP loss, the worst case over the attack suite (and over the gradient attacks alone) and the DCS of that
    worst case per defence."""
    front = set(pareto_front(rows))
    mp_name = "MP (AUC)" if rows[0]["num_classes"] == 2 else "MP (acc)"
    return markdown_table(
        [
            "Defence",
            mp_name,
            "MP loss",
            "worst-case AP (strongest)",
            "worst gradient AP",
            "DCS (worst case)",
            "Pareto front",
        ],
        [
            [
                r["label"],
                pm(r["mp"]),
                f"{100 * r['mp_loss'][0]:+.1f} pt",
                f"{pm(r['worst_case'])} ({strongest(r)[0]})",
                pm(r["worst_case_gradient"]) if "worst_case_gradient" in r else "–",
                pm(r["dcs_worst_case"]),
                "yes" if r["label"] in front else "",
            ]
            for r in rows
        ],
    )
