"""What `fl-kd-vfl` shows a person: one line per epoch and a final table; everything else goes to the log file
(:mod:`fl_kd.simulations.console`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO


def epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """One epoch as a console line, e.g. ``epoch 2/5  loss 0.0851  skipped 0  2.4 s  MP 0.9474``."""
    loss = row.get("loss")
    parts = [
        f"epoch {int(row['epoch'])}/{epochs}",
        f"loss {loss:.4f}" if isinstance(loss, float) else "loss -",
        f"skipped {row.get('skipped_batches', 0)}",
        _duration(float(row.get("seconds", 0.0))),
    ]
    if row.get("mp") is not None:
        parts.append(f"MP {row['mp']:.4f}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    """``2.4 s``, or ``35 ms`` under a second (an in-process epoch on a small table read ``0.0 s``)."""
    return f"{seconds:.1f} s" if seconds >= 1.0 else f"{1000 * seconds:.0f} ms"


def print_vfl_summary(results: Mapping[str, Any], title: str, file: TextIO | None = None) -> None:
    """Terminal tables: main task, then one row per attack with AP and DCS."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))

    main = Table(title=title)
    main.add_column("quantity")
    main.add_column("value", justify="right")
    epochs = len(results.get("train_loss", [])) or 1
    rows = [
        ("MP (test accuracy)", results.get("mp")),
        ("AUC", results.get("auc")),
        ("final train loss", (results.get("train_loss") or [None])[-1]),
        ("skipped batches", results.get("skipped_batches")),
        ("refused gradients", results.get("failed_updates")),
        ("training samples", results.get("num_train")),
        ("seconds per epoch", results.get("train_seconds", 0.0) / epochs),
        ("MP*", results.get("mp_star")),
        ("C-DCS (adaptive AP)", results.get("dcs", {}).get("c_dcs")),
    ]
    for label, value in rows:
        main.add_row(label, fmt(value))
    console = Console(width=140, file=file)
    console.print(main)
    if not results.get("attacks"):
        return
    attacks = Table(title="attacks")
    for column in ("attack", "AP", "AP adaptive", "DCS", "DCS adaptive", "note"):
        attacks.add_column(column, justify="left" if column in ("attack", "note") else "right")
    scores = results.get("dcs", {}).get("per_attack", {})
    for name, result in results["attacks"].items():
        score = scores.get(name, {})
        attacks.add_row(
            name,
            fmt(result.get("ap")),
            fmt(result.get("ap_adaptive")),
            fmt(score.get("dcs")),
            fmt(score.get("dcs_adaptive")),
            str(result.get("error", "")),
        )
    console.print(attacks)
