"""The robustness table: final server accuracy per method x adversary x fraction (mean ± std over seeds), its drop
from the honest run, the fusion weight that went to malicious clients and, for ``targeted``, the attack success rate."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from benchmarks.common import markdown_table, mean_std
from benchmarks.robustness.records import final
from benchmarks.robustness.verdicts import verdict_lines

Key = tuple[str, str, float]
BEGIN, END = "<!-- robustness-benchmark:begin -->", "<!-- robustness-benchmark:end -->"  # see common.write_section


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    average, spread = mean_std([scale * v for v in values])
    return f"{average:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{average:.{digits}f}"


def table(records: list[dict[str, Any]]) -> str:
    """One row per (method, adversary, fraction); accuracies in percent."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        job = record["job"]
        groups[(job["method"], job["adversary"], float(job["fraction"]))].append(record)
    honest = {
        (method, record["job"]["seed"]): final(record, "server_acc")
        for (method, adversary, _), group in groups.items()
        if adversary == "none"
        for record in group
    }
    rows = []
    for (method, adversary, fraction), group in sorted(groups.items()):
        drops = [
            honest[(method, r["job"]["seed"])] - final(r, "server_acc")
            for r in group
            if (method, r["job"]["seed"]) in honest
        ]
        rows.append(
            [
                method,
                adversary,
                f"{fraction:g}",
                str(len(group)),
                _cell([final(r, "server_acc") for r in group]),
                _cell(drops) if adversary != "none" else "",
                _cell([final(r, "malicious_weight_share") for r in group], digits=2),
                _cell([final(r, "attack_success_rate") for r in group]),
            ]
        )
    header = [
        "method",
        "adversary",
        "fraction",
        "seeds",
        "server acc %",
        "drop (points)",
        "malicious weight %",
        "ASR %",
    ]
    return markdown_table(header, rows)


def section(records: list[dict[str, Any]], header: str, note: str, missing: list[str], failures: list[str]) -> str:
    """Its block of ``BENCHMARKS_KD.md``: command line, table, verdicts, what did not run; markers included."""
    lines = [BEGIN, "## Robustness to malicious clients", "", header, ""]
    lines += [note, ""] if note else []
    lines += [table(records), "", *verdict_lines(records)]
    if missing or failures:
        lines += ["### Not finished", ""]
        lines += [f"- failed: {line}" for line in failures]
        lines += _not_run_lines(missing)
        lines.append("")
    return "\n".join([*lines, END])


def _not_run_lines(missing: list[str]) -> list[str]:
    """One line per job not run; more than ten missing at one fraction are counted in one line instead."""
    by_fraction: dict[str, list[str]] = defaultdict(list)
    for name in missing:
        by_fraction[name.split("__")[2]].append(name)
    lines = []
    for fraction, names in by_fraction.items():
        if len(names) > 10:
            lines.append(f"- not run (time): the {len(names)} jobs at fraction {fraction}")
        else:
            lines += [f"- not run (time): `{name}`" for name in names]
    return lines
