"""The MP-vs-AP trade-off plot: one column per setting, the strongest LI attack above, the gradient ones below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.vfl.grid import CONFUSION_DEFENCES, GRADIENT_ATTACKS, NOISE_DEFENCES, in_noise_sweep, is_relative_noise
from benchmarks.vfl.statistics import chance, pareto_front, row_by_defence, strongest, strongest_effective

PLOT_MP_RANGE = 0.12
"""Plots show MP down to this far below the no-defence MP; lower points sit on the floor, labelled."""

#: Colour and marker of each single-point defence (the noise sweeps are lines).
STYLES = {
    "none": ("k", "o"),
    "coae": ("tab:red", "*"),
    "dcae": ("tab:purple", "D"),
    "sparsification": ("tab:olive", "s"),
    "mid": ("tab:cyan", "^"),
}


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
    for column, setting in enumerate(settings):
        rows = summary[setting]
        binary = rows[0]["num_classes"] == 2
        for line, (among, title) in enumerate(
            ((None, "strongest LI attack"), (GRADIENT_ATTACKS, "strongest gradient attack"))
        ):
            ax = axes[line][column]
            _panel(ax, rows, among, binary)
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


def _panel(ax: Any, rows: Sequence[Mapping[str, Any]], among: Sequence[str] | None, binary: bool) -> None:
    """One panel: noise sweeps as lines, the other defences as points with std bars, chance as a dotted line."""
    base = row_by_defence(rows, "none")
    floor = base["mp"][0] - PLOT_MP_RANGE if base is not None else 0.0
    sweeps = [
        (noise, colour, [r for r in rows if in_noise_sweep(r, noise)])
        for noise, colour in zip(NOISE_DEFENCES, ("tab:blue", "tab:orange"), strict=True)
    ]
    sweeps.append(("gaussian × row norm", "tab:green", [r for r in rows if is_relative_noise(r)]))
    for noise, colour, members in sweeps:
        sweep = sorted(members, key=lambda r: r["params"]["scale"])
        if sweep:
            xs = [strongest(r, among)[1][0] for r in sweep]
            ys = [_on_floor(ax, x, r["mp"][0], floor) for r, x in zip(sweep, xs, strict=True)]
            ax.plot(xs, ys, "-o", color=colour, ms=3, lw=1, label=noise)
            for x, y, r in zip(xs, ys, sweep, strict=True):
                ax.annotate(f"{r['params']['scale']:g}", (x, y), fontsize=5, color=colour)
    for r in rows:
        if r["defence"] in STYLES:
            colour, marker = STYLES[r["defence"]]
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
                colour, marker = STYLES[r["defence"]]
                x = strongest_effective(r, among, view="relabelled")[1]
                ax.plot(x, r["mp"][0], marker, mfc="none", color=colour, ms=7, label=f"{r['defence']} relabelled")
    ax.axvline(chance(rows[0]["num_classes"]), color="grey", ls=":", lw=0.8)


def plot_pareto(summary: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> None:
    """MP against the worst-case AP over the attack suite, one panel per setting, the Pareto front as a line.

    Filled markers: the worst case over every attack; hollow ones: over the gradient attacks alone (what a defence
    of the messages can hope to change; PMC reads the attacker's own trained model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        rows = summary[setting]
        by_label = {r["label"]: r for r in rows}
        front = [by_label[label] for label in pareto_front(rows)]
        ax.plot([r["worst_case"][0] for r in front], [r["mp"][0] for r in front], "-", color="grey", lw=1)
        for index, r in enumerate(rows):
            colour = f"C{index % 10}"
            ax.errorbar(r["worst_case"][0], r["mp"][0], xerr=r["worst_case"][1], fmt="o", color=colour, ms=4, lw=0.6)
            if "worst_case_gradient" in r:
                ax.plot(r["worst_case_gradient"][0], r["mp"][0], "o", mfc="none", color=colour, ms=6)
            ax.annotate(r["label"], (r["worst_case"][0], r["mp"][0]), fontsize=5, color=colour)
        level = 0.5 if rows[0]["num_classes"] == 2 else chance(rows[0]["num_classes"])
        ax.axvline(level, color="grey", ls=":", lw=0.8)
        ax.set_title(f"{setting}: MP vs worst-case AP", fontsize=7)
        ax.set_xlabel("worst-case adaptive AP (hollow: gradient attacks only)", fontsize=6)
        ax.set_ylabel("MP (AUC)" if rows[0]["num_classes"] == 2 else "MP (accuracy)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
