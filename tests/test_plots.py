"""Run and sweep plots say what ran and what each line is, in words a person reads (no training here)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import fl_kd.results
from fl_kd.plots import (
    ACCURACY_PNG,
    BYTES_PNG,
    DOWNLINK_LABEL,
    GLOBAL_PANEL,
    PERSONALISED_PANEL,
    UPLINK_LABEL,
    accuracy_figure,
    bytes_figure,
    plot_run,
    readable_setting,
    run_title,
)
from fl_kd.results import write_outputs

TITLE = "fedgems on digits: 4 clients, Dirichlet α=0.5, device profile two_tier"


def _rows() -> list[dict[str, Any]]:
    """Three rounds of a federation with a low and a high tier, as the strategy records them."""
    rows = []
    for index in range(3):
        round_number = index + 1
        rows.append(
            {
                "round": round_number,
                "server_acc": 0.5 + 0.1 * index,
                "client_acc_mean": 0.3 + 0.1 * index,
                "client_acc_low_mean": 0.25 + 0.1 * index,
                "client_acc_high_mean": 0.35 + 0.1 * index,
                "client_acc_low_max": 0.9,  # min/max per tier are not plotted
                "client_pacc_mean": 0.4 + 0.1 * index,
                "client_pacc_low_mean": None if index == 0 else 0.35,  # a missing value (NaN in JSON) is a gap
                "client_pacc_high_mean": 0.45 + 0.1 * index,
                "uplink_bytes": 120_000 // round_number,
                "downlink_bytes": 140_000,
                "wall_seconds": 1.0,
            }
        )
    return rows


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """The builders hand back open figures; close them so pyplot does not keep them alive between tests."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _suptitle(fig: Figure) -> str:
    get_suptitle = getattr(fig, "get_suptitle", None)  # matplotlib >= 3.8
    if get_suptitle is not None:
        return str(get_suptitle())
    return "" if fig._suptitle is None else fig._suptitle.get_text()  # type: ignore[attr-defined]


def _legend(fig: Figure) -> list[str]:
    """Texts of the figure's one legend (both panels share it)."""
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    return [text.get_text() for text in fig.legends[0].get_texts()]


def _ydata(ax: Axes, index: int) -> list[float]:
    return [float(y) for y in np.asarray(ax.get_lines()[index].get_ydata())]


def _whole_rounds(ax: Axes) -> list[float]:
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [tick for tick in ax.get_xticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    return ticks


def test_plot_run_writes_both_pngs(tmp_path: Path) -> None:
    paths = plot_run(_rows(), tmp_path, title=TITLE)
    assert paths == [tmp_path / ACCURACY_PNG, tmp_path / BYTES_PNG]
    assert all(path.stat().st_size > 0 for path in paths)


def test_accuracy_figure_has_title_readable_legend_and_personalised_panel() -> None:
    fig = accuracy_figure(_rows(), title=TITLE)
    assert _suptitle(fig) == TITLE
    global_ax, personalised_ax = fig.axes
    assert global_ax.get_title() == GLOBAL_PANEL == "global test set"
    assert personalised_ax.get_title() == PERSONALISED_PANEL == "own (personalised) test set"
    assert global_ax.get_ylabel() == "accuracy"
    assert global_ax.get_xlabel() == personalised_ax.get_xlabel() == "round"
    # One legend for both panels, tiers in the order low -> high whatever the key order.
    assert _legend(fig) == ["server", "clients, mean", "clients, low tier", "clients, high tier"]
    assert [line.get_label() for line in personalised_ax.get_lines()] == [
        "clients, mean",
        "clients, low tier",
        "clients, high tier",
    ]
    for ax in fig.axes:
        assert set(_whole_rounds(ax)) >= {1.0, 2.0, 3.0}
        assert ax.get_ylim() == pytest.approx((0.0, 1.02))


def test_accuracy_figure_without_personalised_or_tiers_is_one_panel() -> None:
    rows = [
        {"round": r, "server_acc": 0.2 * r, "client_acc_mean": 0.1 * r, "client_acc_standard_mean": 0.1 * r}
        for r in (1, 2, 3)
    ]
    fig = accuracy_figure(rows)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == GLOBAL_PANEL
    assert _suptitle(fig) == ""
    assert _legend(fig) == ["server", "clients, mean"]  # a single tier would repeat the mean


def test_bytes_figure_shows_per_round_and_cumulative_in_readable_units() -> None:
    fig = bytes_figure(_rows(), title=TITLE)
    assert _suptitle(fig) == TITLE
    per_round, cumulative = fig.axes
    assert (per_round.get_title(), cumulative.get_title()) == ("per round", "cumulative")
    assert per_round.get_ylabel() == "kB per round"  # largest round: 140 kB
    assert cumulative.get_ylabel() == "cumulative kB"  # 420 kB downlink in all
    assert _legend(fig) == [f"{UPLINK_LABEL}, total 220 kB", f"{DOWNLINK_LABEL}, total 420 kB"]
    assert UPLINK_LABEL == "uplink (clients → server)"
    bar_heights = [patch.get_height() for patch in per_round.patches if isinstance(patch, Rectangle)]
    assert bar_heights == pytest.approx([120, 60, 40, 140, 140, 140])
    assert _ydata(cumulative, 1) == pytest.approx([140, 280, 420])  # downlink, kB so far
    for ax in fig.axes:
        assert set(_whole_rounds(ax)) >= {1.0, 2.0, 3.0}


def test_a_single_round_gets_tick_one_not_fractions() -> None:
    rows = _rows()[:1]
    for fig in (accuracy_figure(rows), bytes_figure(rows)):
        for ax in fig.axes:
            assert _whole_rounds(ax) == [1.0]


def test_bytes_figure_switches_to_megabytes() -> None:
    rows = [{"round": r, "uplink_bytes": 3_000_000, "downlink_bytes": 500_000} for r in (1, 2)]
    fig = bytes_figure(rows)
    assert fig.axes[0].get_ylabel() == "MB per round"
    assert fig.axes[1].get_ylabel() == "cumulative MB"
    assert _legend(fig) == [f"{UPLINK_LABEL}, total 6 MB", f"{DOWNLINK_LABEL}, total 1 MB"]


@pytest.mark.parametrize(
    ("partition", "expected"),
    [
        ({"name": "dirichlet", "alpha": 0.5, "classes_per_client": None}, "Dirichlet α=0.5"),
        ({"name": "pathological", "alpha": 0.5, "classes_per_client": 2}, "pathological, 2 classes per client"),
        ({"name": "quantity_skew", "alpha": 10.0, "classes_per_client": None}, "quantity skew α=10"),
        ({"name": "iid", "alpha": 0.5, "classes_per_client": None}, "IID"),
    ],
)
def test_run_title_names_dataset_partition_devices_and_strategy(partition: dict[str, Any], expected: str) -> None:
    config = {
        "dataset": {"name": "digits", "root": None},
        "partition": {**partition, "min_size": 10},
        "device_profile": {"name": "three_tier", "tiers": {}},
        "strategy": {"name": "fedgems", "rounds": 5},
        "num_clients": 10,
        "seed": 0,
    }
    assert run_title(config) == f"fedgems on digits: 10 clients, {expected}, device profile three_tier"


def test_run_title_of_a_real_experiment_config() -> None:
    from fl_kd.config import to_mapping
    from tests.kd_configs import tiny_config

    experiment = tiny_config(partition={"name": "pathological", "classes_per_client": 3})
    assert run_title(to_mapping(experiment)) == (
        "fedgems on digits: 4 clients, pathological, 3 classes per client, device profile tiny_two_tier"
    )


def test_run_title_takes_dotted_keys_and_leaves_out_missing_ones() -> None:
    assert run_title({"dataset.name": "cifar10", "strategy.name": "fedgems"}) == "fedgems on cifar10"
    assert run_title({"num_clients": 3}) == "3 clients"
    assert run_title({}) == ""


def test_write_outputs_passes_the_title_to_the_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    monkeypatch.setattr(fl_kd.results, "plot_run", lambda rows, out, title=None: seen.append(title))
    write_outputs(tmp_path, _rows(), {}, title=TITLE)
    write_outputs(tmp_path, _rows(), {})
    assert seen == [TITLE, None]


def test_readable_setting_shortens_override_keys() -> None:
    assert readable_setting("partition.alpha=0.1 seed=0") == "alpha=0.1, seed=0"
    assert readable_setting("strategy.lr=0.1 device_profile.lr=0.2") == "strategy.lr=0.1, device_profile.lr=0.2"
    assert readable_setting("(defaults)") == "(defaults)"


def test_importing_results_does_not_import_matplotlib() -> None:
    code = "import sys, fl_kd.results, fl_kd.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
