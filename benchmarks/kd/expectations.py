"""Plain verdicts on what selective distillation promises, with the numbers behind them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.common import mean
from benchmarks.kd.statistics import SeedRun, final, kd_rows, pm, tier_names

NOTE = [
    "Note: the KD clients also train on the labelled transfer set (weight epsilon on its cross-entropy), which",
    "the local-only clients never see, so part of their gain is extra labelled data rather than distilled",
    "knowledge.",
]


def verdict_text(on_mean: bool, seeds_passed: int, num_seeds: int) -> str:
    """``holds`` only when the mean and every seed pass; a pass on the mean alone is called out as such."""
    if not on_mean:
        return f"MISSED ({seeds_passed} of {num_seeds} seeds pass)"
    return "holds" if seeds_passed == num_seeds else f"holds on the mean only ({seeds_passed} of {num_seeds} seeds)"


def expectations_section(runs: Sequence[SeedRun], matched: bool | None) -> tuple[list[str], dict[str, Any]]:
    """The report's last section: server above every client tier, clients above local-only, and so on.

    Parameters
    ----------
    runs : Sequence[SeedRun]
        One per seed, with the distillation run and both baselines.
    matched : bool | None
        Whether the Flower and in-process runs matched; None when Flower was skipped.
    """
    tiers = tier_names(runs)
    server_final = final(runs, "server_acc", "kd")
    best_tier = max(tiers, key=lambda t: mean(final(runs, f"client_acc_{t}_mean", "kd")))
    best_tier_acc = mean(final(runs, f"client_acc_{best_tier}_mean", "kd"))
    seeds_above_tiers = sum(
        1
        for run in runs
        if float(kd_rows(run)[-1]["server_acc"]) > max(float(kd_rows(run)[-1][f"client_acc_{t}_mean"]) for t in tiers)
    )
    server_ok = mean(server_final) > best_tier_acc
    lines = [
        "## Expectations",
        "",
        f"- Server above the best client tier: **{verdict_text(server_ok, seeds_above_tiers, len(runs))}**. "
        f"Final server accuracy {pm(server_final)} vs best tier `{best_tier}` {best_tier_acc:.4f} (KD clients, "
        "global test; per seed, against that seed's best tier).",
    ]
    clients_ok: dict[str, bool] = {}
    for prefix, label in (("client_acc", "global test"), ("client_pacc", "personalised test")):
        checks = [
            (
                tier,
                mean(final(runs, f"{prefix}_{tier}_mean", "kd")),
                mean(final(runs, f"{prefix}_{tier}_mean", "local_only")),
            )
            for tier in tiers
        ]
        misses = [tier for tier, kd, local in checks if not kd > local]
        clients_ok |= {f"{tier}/{prefix}": kd > local for tier, kd, local in checks}
        verdict = "holds" if not misses else f"MISSED for {', '.join(misses)}"
        detail = "; ".join(f"{tier} {kd:.4f} vs {local:.4f}" for tier, kd, local in checks)
        lines.append(f"- Clients above local-only ({label}), every tier: **{verdict}** ({detail}).")
    transfer_only_final = [float(run.server_only[-1]["server_acc"]) for run in runs]
    transfer_only_ok = mean(server_final) > mean(transfer_only_final)
    seeds_above_alone = sum(1 for kd, alone in zip(server_final, transfer_only_final, strict=True) if kd > alone)
    lines.append(
        f"- Server above the same server trained on the transfer set alone (client knowledge helps the server): "
        f"**{verdict_text(transfer_only_ok, seeds_above_alone, len(runs))}**. {pm(server_final)} vs "
        f"{pm(transfer_only_final)}."
    )
    if matched is not None:
        lines.append(f"- Flower = in-process: **{'holds' if matched else 'MISSED'}**.")
    lines += ["", *NOTE, ""]
    expectations = {
        "server_above_best_tier": server_ok,
        "server_above_transfer_only": transfer_only_ok,
        "clients_above_local_only": clients_ok,
    }
    return lines, {"expectations": expectations}
