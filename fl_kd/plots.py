"""Plots of a run folder, written for a person rather than for the metric keys (a sweep's: :mod:`fl_kd.sweep_plots`).

A run gets ``accuracy.png`` (server and client accuracy per round, on the global test set and, beside it, on each
client's own test set) and ``bytes.png`` (uplink and downlink traffic per round and cumulative). The builders
(:func:`accuracy_figure`, :func:`bytes_figure`) return matplotlib figures before anything is saved, so tests can read
titles, legends and ticks. Matplotlib is imported lazily with the Agg backend: importing this module costs nothing and
needs no display.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCURACY_PNG = "accuracy.png"
BYTES_PNG = "bytes.png"
DPI = 120

GLOBAL_PANEL = "global test set"
PERSONALISED_PANEL = "own (personalised) test set"
UPLINK_LABEL = "uplink (clients → server)"
DOWNLINK_LABEL = "downlink (server → clients)"

# Device tiers in the order a reader expects them; other tier names follow alphabetically.
_TIER_ORDER = ("low", "mid", "high")
_TIER_KEY = re.compile(r"^client_p?acc_(?P<tier>.+)_mean$")
_PARTITION_NAMES = {
    "iid": "IID",
    "dirichlet": "Dirichlet",
    "pathological": "pathological",
    "quantity_skew": "quantity skew",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------------------- titles


def run_title(config: Mapping[str, Any]) -> str:
    """A one-line title naming what ran, from the plain (nested) config mapping of an experiment.

    ``run_title(to_mapping(experiment))`` gives e.g. ``"fedgems on digits: 10 clients, Dirichlet α=0.5, device
    profile three_tier"``. Dotted flat keys (``{"dataset.name": ...}``) work as well; missing keys are left out.
    """
    strategy = _lookup(config, "strategy.name")
    dataset = _lookup(config, "dataset.name")
    head = " on ".join(str(part) for part in (strategy, dataset) if part is not None)
    details = []
    num_clients = _lookup(config, "num_clients")
    if num_clients is not None:
        details.append(f"{num_clients} clients")
    partition = _partition_text(config)
    if partition:
        details.append(partition)
    device_profile = _lookup(config, "device_profile.name")
    if device_profile is not None:
        details.append(f"device profile {device_profile}")
    if head and details:
        return f"{head}: {', '.join(details)}"
    return head or ", ".join(details)


def _partition_text(config: Mapping[str, Any]) -> str:
    name = _lookup(config, "partition.name")
    if name is None:
        return ""
    text = _PARTITION_NAMES.get(str(name), str(name))
    alpha = _lookup(config, "partition.alpha")
    classes = _lookup(config, "partition.classes_per_client")
    if name == "pathological" and classes is not None:
        return f"{text}, {classes} classes per client"
    if name != "iid" and alpha is not None:
        return f"{text} α={alpha:g}" if isinstance(alpha, (int, float)) else f"{text} α={alpha}"
    return text


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------------------- a run


def plot_run(rows: Sequence[Mapping[str, Any]], out_dir: Path | str, title: str | None = None) -> list[Path]:
    """Write ``accuracy.png`` and ``bytes.png`` for a run's per-round metrics; returns their paths.

    Parameters
    ----------
    rows : Sequence[Mapping[str, Any]]
        One flat dict of metrics per round (``round``, ``server_acc``, ``client_acc_<tier>_mean``,
        ``client_pacc_<tier>_mean``, ``uplink_bytes``, ``downlink_bytes``, ...).
    out_dir : Path | str
        The run folder.
    title : str | None (default: None)
        What ran, shown above both plots; see :func:`run_title`.
    """
    out = Path(out_dir)
    paths = []
    for name, figure in ((ACCURACY_PNG, accuracy_figure(rows, title)), (BYTES_PNG, bytes_figure(rows, title))):
        paths.append(out / name)
        save_figure(figure, paths[-1])
    return paths


def accuracy_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Accuracy per round: server and clients (mean and per device tier) on the global test set, and beside it the
    clients on their own (personalised) test sets when the rows have them. One legend for both panels."""
    plt = _pyplot()
    rounds = _rounds(rows)
    has_personalised = any(key.startswith("client_pacc_") for row in rows for key in row)
    fig, axes = plt.subplots(
        1, 2 if has_personalised else 1, figsize=(10 if has_personalised else 6, 4.4), sharey=True, squeeze=False
    )
    panels = [(axes[0][0], "acc", GLOBAL_PANEL)]
    if has_personalised:
        panels.append((axes[0][1], "pacc", PERSONALISED_PANEL))
    tiers = _tiers(rows)
    handles: dict[str, Any] = {}
    for ax, metric, panel_title in panels:
        series = [(f"client_{metric}_mean", "clients, mean", "black", "-", 2.2)]
        if len(tiers) > 1:  # a single tier would repeat the mean
            series += [
                (f"client_{metric}_{tier}_mean", f"clients, {tier} tier", f"C{index + 1}", "--", 1.4)
                for index, tier in enumerate(tiers)
            ]
        if metric == "acc":
            series.insert(0, ("server_acc", "server", "C0", "-", 2.2))
        for key, label, color, style, width in series:
            if not any(row.get(key) is not None for row in rows):
                continue
            (line,) = ax.plot(
                rounds, _values(rows, key), color=color, linestyle=style, linewidth=width, marker="o", label=label
            )
            handles.setdefault(label, line)
        ax.set_title(panel_title)
        ax.set_xlabel("round")
        _integer_rounds(ax, rounds)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 5), frameon=False)
    _finish(fig, title, legend_rows=math.ceil(len(handles) / 5))
    return fig


def bytes_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Traffic per round (uplink and downlink bars side by side) and cumulative (lines), in B/kB/MB/GB."""
    plt = _pyplot()
    rounds = _rounds(rows)
    directions = [
        (key, label, color)
        for key, label, color in (("uplink_bytes", UPLINK_LABEL, "C0"), ("downlink_bytes", DOWNLINK_LABEL, "C1"))
        if any(row.get(key) is not None for row in rows)
    ]
    fig, (per_round, cumulative) = plt.subplots(1, 2, figsize=(10, 4.4))
    per_values = {key: [0.0 if math.isnan(v) else v for v in _values(rows, key)] for key, _, _ in directions}
    totals = {key: _cumsum(values) for key, values in per_values.items()}

    unit, scale = _byte_unit(max((max(v) for v in per_values.values() if v), default=0.0))
    width = 0.8 / max(len(directions), 1)
    handles = []
    for index, (key, label, color) in enumerate(directions):
        offset = (index - (len(directions) - 1) / 2) * width
        total = _format_bytes(totals[key][-1] if totals[key] else 0.0)
        handles.append(
            per_round.bar(
                [r + offset for r in rounds],
                [v / scale for v in per_values[key]],
                width=width,
                color=color,
                label=f"{label}, total {total}",
            )
        )
    per_round.set_title("per round")
    per_round.set_ylabel(f"{unit} per round")

    total_unit, total_scale = _byte_unit(max((v[-1] for v in totals.values() if v), default=0.0))
    for key, _, color in directions:
        cumulative.plot(rounds, [v / total_scale for v in totals[key]], color=color, marker="o")
    cumulative.set_title("cumulative")
    cumulative.set_ylabel(f"cumulative {total_unit}")
    cumulative.set_ylim(bottom=0)

    for ax in (per_round, cumulative):
        ax.set_xlabel("round")
        _integer_rounds(ax, rounds)
        ax.grid(alpha=0.3, axis="y")
        if not directions:
            ax.text(0.5, 0.5, "no traffic recorded", ha="center", va="center", transform=ax.transAxes)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    _finish(fig, title, legend_rows=1 if handles else 0)
    return fig


# ---------------------------------------------------------------------------------------------------------- a sweep


def readable_setting(setting: str) -> str:
    """Hydra overrides with each key cut to its last part: ``"partition.alpha=0.1 seed=0"`` -> ``"alpha=0.1, seed=0"``.

    A key is kept whole where its last part would be ambiguous (``strategy.lr`` beside ``device_profile.lr``).
    """
    overrides = setting.split()
    if not overrides or "=" not in setting:
        return setting
    keys = [o.split("=", 1)[0] for o in overrides]
    last = [k.rsplit(".", 1)[-1].lstrip("+~") for k in keys]
    parts = []
    for override, key, short in zip(overrides, keys, last, strict=True):
        if "=" not in override:
            parts.append(override)
            continue
        name = short if last.count(short) == 1 else key
        parts.append(f"{name}={override.split('=', 1)[1]}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------- helpers


def _rounds(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(row.get("round", index + 1)) for index, row in enumerate(rows)]


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float("nan") if row.get(key) is None else float(row[key]) for row in rows]


def _tiers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    found = {match["tier"] for row in rows for key in row if (match := _TIER_KEY.match(key))}
    return [tier for tier in _TIER_ORDER if tier in found] + sorted(found - set(_TIER_ORDER))


def _cumsum(values: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def _byte_unit(largest: float) -> tuple[str, float]:
    """The decimal unit that keeps ``largest`` between 1 and 1000 (B, kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if largest >= scale:
            return unit, scale
    return "B", 1.0


def _format_bytes(value: float) -> str:
    unit, scale = _byte_unit(value)
    return f"{value / scale:.3g} {unit}"


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _integer_rounds(ax: Axes, rounds: Sequence[int]) -> None:
    """Whole-number round ticks, half a round of room either side (so one round alone still gets tick 1)."""
    from matplotlib.ticker import MaxNLocator

    if rounds:
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _finish(fig: Figure, title: str | None, legend_rows: int = 0) -> None:
    """Title on top, room at the bottom for a figure legend, then a tight layout in between."""
    if title:
        fig.suptitle(title, fontsize=11)
    bottom = 0.03 + 0.055 * legend_rows if legend_rows else 0.0
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))


def save_figure(fig: Figure, path: Path | str) -> None:
    """Save a figure as PNG and close it (pyplot keeps every open figure alive otherwise)."""
    plt = _pyplot()
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
