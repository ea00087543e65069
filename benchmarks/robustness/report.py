"""The robustness table: final server accuracy per method x adversary x fraction (mean ± std over seeds), its drop
from the honest run, the fusion weight that went to malicious clients and, for ``targeted``, the attack success rate."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from benchmarks.common import markdown_table, mean_std

Key = tuple[str, str, float]


def _final(record: dict[str, Any], key: str) -> float:
    value = record["rounds"][-1].get(key)
    return float("nan") if value is None else float(value)


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
        (method, record["job"]["seed"]): _final(record, "server_acc")
        for (method, adversary, _), group in groups.items()
        if adversary == "none"
        for record in group
    }
    rows = []
    for (method, adversary, fraction), group in sorted(groups.items()):
        drops = [
            honest[(method, r["job"]["seed"])] - _final(r, "server_acc")
            for r in group
            if (method, r["job"]["seed"]) in honest
        ]
        rows.append(
            [
                method,
                adversary,
                f"{fraction:g}",
                str(len(group)),
                _cell([_final(r, "server_acc") for r in group]),
                _cell(drops) if adversary != "none" else "",
                _cell([_final(r, "malicious_weight_share") for r in group], digits=2),
                _cell([_final(r, "attack_success_rate") for r in group]),
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
