"""The figure of a sweep (``fl-kd-table``): accuracy per setting over rounds and against what it cost.

One row per accuracy (the server's, the clients' mean on the global test set), one column per x axis: rounds,
cumulative uplink bytes of all clients, cumulative simulated seconds (each round's slowest sampled client) and
cumulative training FLOPs of a client. One line per setting (e.g. per strategy), the mean over its seeds. A user
sees at once which setting reaches an accuracy with the least traffic, device time or device compute.
The sweep part of :mod:`fl_kd.plots` lives here (that module's helpers are shared), so each stays short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from fl_kd.plots import _byte_unit, _finish, _integer_rounds, _nanmean, _pyplot, readable_setting

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SWEEP_PNG = "sweep.png"

#: Per-round keys the figure reads from each run's rows (``fl-kd-table`` derives the last one from the tiers).
ROUND, SERVER_ACC, CLIENT_ACC = "round", "server_acc", "client_acc_mean"
UPLINK, SIM_SECONDS, CLIENT_FLOPS = "uplink_bytes", "sim_seconds", "client_flops"

ACCURACIES = ((SERVER_ACC, "server accuracy"), (CLIENT_ACC, "client accuracy (mean)"))

#: An x axis spanning more than this ratio between settings is drawn on a log scale (weights vs logits).
LOG_RATIO = 20.0


class XAxis(NamedTuple):
    key: str
    title: str
    label: str
    units: tuple[tuple[str, float], ...]


_FLOP_UNITS = (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3), ("FLOP", 1.0))
X_AXES = (
    XAxis(ROUND, "over rounds", "round", ()),
    XAxis(UPLINK, "against uplink traffic", "cumulative uplink, all clients ({unit})", ()),
    XAxis(SIM_SECONDS, "against simulated time", "cumulative simulated time ({unit})", (("s", 1.0),)),
    XAxis(CLIENT_FLOPS, "against client compute", "cumulative training FLOPs per client ({unit})", _FLOP_UNITS),
)


class Curve(NamedTuple):
    """One setting's mean over seeds: x and y per round."""

    label: str
    x: list[float]
    y: list[float]


def sweep_overview_figure(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], shared: str = "", missing: int = 0
) -> Figure:
    """Accuracy over rounds and against cumulative uplink bytes, simulated seconds and client FLOPs.

    Parameters
    ----------
    groups : Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]
        Per setting (e.g. ``"strategy=fedgems partition.alpha=0.1"``), in legend order, the per-round rows of each
        seed's run with the keys ``round``, ``server_acc``, ``client_acc_mean``, ``uplink_bytes``, ``sim_seconds``
        and ``client_flops`` (per round, not cumulative; a missing or NaN value leaves that run off that panel).
    shared : str (default: "")
        The overrides all jobs share, shown under the title.
    missing : int (default: 0)
        Jobs of the sweep without results, failed or unfinished (counted in the title: they have no line).

    An accuracy no run recorded gets no row (FedMD's clients-only consensus has no server accuracy), an x axis no
    run recorded no column.
    """
    plt = _pyplot()
    rows = [(key, name) for key, name in ACCURACIES if _recorded(groups, key)] or list(ACCURACIES[:1])
    columns = [axis for axis in X_AXES if axis.key == ROUND or _recorded(groups, axis.key)]
    labels = {
        setting: _legend_label(setting, len(runs), min(len(_usable(runs, axis.key)) for axis in columns))
        for setting, runs in groups.items()
    }
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(4.6 * len(columns), 3.9 * len(rows) + 0.9), squeeze=False
    )
    handles: dict[str, Any] = {}
    for row_index, (y_key, y_name) in enumerate(rows):
        for column_index, axis in enumerate(columns):
            ax = axes[row_index][column_index]
            curves = [_curve(labels[setting], runs, axis.key, y_key) for setting, runs in groups.items()]
            drawn = [(index, curve) for index, curve in enumerate(curves) if curve is not None and curve.x]
            scale = _x_axis(ax, axis, [curve for _, curve in drawn])
            for index, curve in drawn:
                x = [value / scale for value in curve.x]
                (line,) = ax.plot(x, curve.y, color=f"C{index % 10}", marker="o", markersize=4, label=curve.label)
                handles.setdefault(curve.label, line)
            ax.set_ylim(0.0, 1.02)
            ax.grid(alpha=0.3)
            if row_index == 0:
                ax.set_title(axis.title)
            if column_index == 0:
                ax.set_ylabel(y_name)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 3), frameon=False)
    title = "accuracy per setting, mean over seeds"
    if shared:
        title += f"\nall jobs: {readable_setting(shared)}"
    if missing:
        title += f"\n{missing} job{'s' if missing != 1 else ''} without results not shown (see sweep.md)"
    _finish(fig, title, legend_rows=math.ceil(len(handles) / 3))
    return fig


def _legend_label(setting: str, seeds: int, fewest: int) -> str:
    """The setting and its seeds; ``fewest``: the runs of the panel that could draw the fewest of them."""
    counted = f"{seeds} seed{'s' if seeds != 1 else ''}"
    return f"{readable_setting(setting)} ({counted}{f'; {fewest} on some panels' if fewest < seeds else ''})"


def _usable(runs: Sequence[Sequence[Mapping[str, Any]]], x_key: str) -> list[Sequence[Mapping[str, Any]]]:
    """The runs that recorded ``x_key`` in every round: those a panel over ``x_key`` averages."""
    return [run for run in runs if run and all(_finite(row.get(x_key)) for row in run)]


def _recorded(groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], key: str) -> bool:
    return any(_finite(row.get(key)) for runs in groups.values() for run in runs for row in run)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _curve(label: str, runs: Sequence[Sequence[Mapping[str, Any]]], x_key: str, y_key: str) -> Curve | None:
    """Mean over the runs that recorded ``x_key`` in every round; rounds up to the shortest such run."""
    usable = _usable(runs, x_key)
    if not usable:
        return None
    length = min(len(run) for run in usable)
    if x_key == ROUND:
        xs = [[float(row[ROUND]) for row in run[:length]] for run in usable]
    else:
        xs = [_cumulative([float(row[x_key]) for row in run[:length]]) for run in usable]
    ys = [[float(row[y_key]) if _finite(row.get(y_key)) else math.nan for row in run[:length]] for run in usable]
    x = [_nanmean([curve[i] for curve in xs]) for i in range(length)]
    y = [_nanmean([curve[i] for curve in ys]) for i in range(length)]
    keep = [i for i in range(length) if math.isfinite(y[i])]
    return Curve(label, [x[i] for i in keep], [y[i] for i in keep])


def _cumulative(values: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def _x_axis(ax: Axes, axis: XAxis, curves: Sequence[Curve]) -> float:
    """Label the x axis with a unit that suits the largest value, logarithmic for a wide span; returns the unit's
    scale (what to divide x by)."""
    if axis.key == ROUND:
        ax.set_xlabel(axis.label)
        _integer_rounds(ax, [int(x) for curve in curves for x in curve.x])
        return 1.0
    largest = max((max(curve.x) for curve in curves), default=0.0)
    unit, scale = _unit(axis, largest)
    ax.set_xlabel(axis.label.format(unit=unit))
    finals = [curve.x[-1] for curve in curves if curve.x[-1] > 0]
    if finals and max(finals) / min(finals) > LOG_RATIO:
        ax.set_xscale("log")
    elif largest > 0:
        ax.set_xlim(0.0, largest / scale * 1.05)
    return scale


def _unit(axis: XAxis, largest: float) -> tuple[str, float]:
    if not axis.units:
        return _byte_unit(largest)
    for unit, scale in axis.units:
        if largest >= scale:
            return unit, scale
    return axis.units[-1]
