"""Table-building functions of the VFL benchmark (``benchmarks/vfl``) on hand-made records (no training)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import markdown_table
from benchmarks.vfl.expectations import Comparison, dp_versus, expectations, target_lines, unstopped_attacks
from benchmarks.vfl.grid import (
    FULL_SETTINGS,
    RELATIVE_NOISE_SCALES,
    DefenceSpec,
    applies,
    attack_names,
    defence_grid,
    in_noise_sweep,
    is_relative_noise,
)
from benchmarks.vfl.plot import plot_pareto
from benchmarks.vfl.statistics import effective_ap, pareto_front, summarise
from benchmarks.vfl.tables import setting_tables, worst_case_table


def record(
    defence: str, seed: int, mp: float, aps: dict[str, float], params: dict[str, Any] | None = None, classes: int = 10
) -> dict[str, Any]:
    """One training's record as ``run_one`` writes it, for a multi-class task (adaptive AP = raw AP)."""
    spec = DefenceSpec(defence, tuple((params or {}).items()))
    return {
        "setting": "toy/sum",
        "defence": defence,
        "label": spec.label,
        "params": params or {},
        "seed": seed,
        "num_classes": classes,
        "mp": mp,
        "accuracy": mp,
        "attacks": {
            name: {"ap": ap, "ap_adaptive": ap, "below_chance": max(0.0, 1 / classes - ap)} for name, ap in aps.items()
        },
    }


def test_summarise_scores_dcs_against_the_same_seed_no_defence_mp() -> None:
    records = [
        record("none", 0, 0.80, {"DLI": 1.0}),
        record("none", 1, 0.90, {"DLI": 1.0}),
        record("coae", 0, 0.78, {"DLI": 0.0}),
        record("coae", 1, 0.86, {"DLI": 0.2}),
    ]
    rows = summarise(records)["toy/sum"]
    coae = rows[1]
    assert coae["label"] == "coae λ=2"
    # MP* - MP per seed: 0.02 and 0.04.
    assert coae["mp_loss"][0] == pytest.approx(0.03)
    assert coae["ap"]["DLI"] == pytest.approx((0.1, math.sqrt(0.02)))
    # DCS = 1 / (1 + sqrt(0.5 AP^2 + 0.5 loss^2)): seed 0 -> 1/(1 + sqrt(0.0002)), seed 1 -> 1/(1 + sqrt(0.0208)).
    expected = [1 / (1 + math.sqrt(0.0002)), 1 / (1 + math.sqrt(0.0208))]
    assert coae["dcs"]["DLI"][0] == pytest.approx(sum(expected) / 2)
    assert coae["t_dcs"][0] == pytest.approx(sum(expected) / 2)
    assert coae["below_chance"]["DLI"][0] == pytest.approx(0.05)
    # The no-defence row loses nothing and its DCS only pays for the AP of 1: 1 / (1 + sqrt(0.5)).
    assert rows[0]["dcs"]["DLI"][0] == pytest.approx(1 / (1 + math.sqrt(0.5)))


def test_summarise_needs_a_no_defence_run_per_seed() -> None:
    records = [record("none", 0, 0.8, {"DLI": 1.0}), record("coae", 1, 0.8, {"DLI": 0.0})]
    with pytest.raises(ValueError, match="no 'none' run for toy/sum seed 1"):
        summarise(records)


def test_setting_table_shows_mean_and_std_cells() -> None:
    records = [record("none", s, 0.8, {"DLI": 1.0, "PMC": 0.6}) for s in (0, 1)]
    records += [record("coae", 0, 0.78, {"DLI": 0.0, "PMC": 0.5}), record("coae", 1, 0.78, {"DLI": 0.2, "PMC": 0.5})]
    text = setting_tables(summarise(records)["toy/sum"])
    assert "| Defence | MP (acc) | MP loss | AP DLI | AP PMC |" in text
    assert "| coae λ=2 | 0.780±0.000 | +2.0 pt | 0.100±0.141 | 0.500±0.000 |" in text
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a", "b"], [["1"]])


def _sweep(
    coae_ap: float,
    coae_mp: float,
    noise: list[tuple[float, float, float]],
    relative: tuple[tuple[float, float, float], ...] = (),
) -> list[dict[str, Any]]:
    records = [record("none", s, 0.90, {"DLI": 1.0}) for s in (0, 1)]
    records += [record("coae", s, coae_mp, {"DLI": coae_ap}) for s in (0, 1)]
    for scale, ap, mp in noise:
        records += [record("gaussian", s, mp, {"DLI": ap}, {"scale": scale}) for s in (0, 1)]
    for scale, ap, mp in relative:
        records += [record("gaussian", s, mp, {"DLI": ap}, {"relative": True, "scale": scale}) for s in (0, 1)]
    return summarise(records)["toy/sum"]


def _coae_versus_gaussian(rows: list[dict[str, Any]]) -> Comparison:
    """``dp_versus`` of Gaussian noise against CoAE: the sweeps below hold both and ``none``, so it compares them."""
    found = dp_versus(rows, "coae", "gaussian", None)
    assert found is not None
    return found


def test_dp_versus_compares_the_cheapest_noise_scale_at_matched_ap() -> None:
    # CoAE at AP 0.05 (floored to chance 0.1) for 1 pt; the only noise at that AP costs 8 pt -> holds.
    rows = _sweep(0.05, 0.89, [(0.01, 0.5, 0.90), (0.1, 0.11, 0.82)])
    found = _coae_versus_gaussian(rows)
    assert found.verdict == "holds"
    assert "gaussian σ=0.1" in found.noise
    # Noise that reaches the same AP for less MP: does not hold.
    rows = _sweep(0.05, 0.85, [(0.1, 0.11, 0.89)])
    assert _coae_versus_gaussian(rows).verdict == "does not hold"
    # A difference inside half a point is no difference.
    rows = _sweep(0.05, 0.89, [(0.1, 0.11, 0.888)])
    assert _coae_versus_gaussian(rows).verdict == "no clear difference"
    # No scale reaches CoAE's AP, and the largest already costs more: holds within the sweep.
    rows = _sweep(0.05, 0.89, [(0.1, 0.5, 0.80)])
    assert _coae_versus_gaussian(rows).verdict == "holds (no scale reaches it)"
    # Relative noise that reaches CoAE's AP for less MP is not part of the fixed-scale sweep.
    rows = _sweep(0.05, 0.89, [(0.1, 0.5, 0.80)], relative=((10.0, 0.05, 0.89),))
    assert _coae_versus_gaussian(rows).verdict == "holds (no scale reaches it)"
    # CoAE that does not lower the AP leaves nothing to compare.
    rows = _sweep(1.0, 0.89, [(0.1, 0.5, 0.80)])
    assert _coae_versus_gaussian(rows).verdict.startswith("not applicable")


def test_effective_ap_floors_at_chance_and_counts_relabelling() -> None:
    records = [record("none", 0, 0.9, {"DLI": 1.0}), record("coae", 0, 0.9, {"DLI": 0.0})]
    records[1]["attacks"]["DLI"]["relabelled"] = 0.85
    coae = summarise(records)["toy/sum"][1]
    assert effective_ap(coae, "DLI") == pytest.approx(0.1)
    assert effective_ap(coae, "DLI", "relabelled") == pytest.approx(0.85)
    assert unstopped_attacks(coae) == ["DLI (raw AP 0.000, but 0.850 after relabelling)"]
    with pytest.raises(ValueError, match="view"):
        effective_ap(coae, "DLI", "oracle")


def test_defence_grid_and_attack_names() -> None:
    specs = defence_grid(["coae", "gaussian"], [0.01, 0.1])
    relative = [f"gaussian σ={s:g} × row norm" for s in RELATIVE_NOISE_SCALES]
    assert [s.label for s in specs] == ["none", "coae λ=2", "gaussian σ=0.01", "gaussian σ=0.1", *relative]
    # relative noise is a sweep of its own: it never stands for the fixed-scale sweep
    assert [in_noise_sweep(s, "gaussian") for s in specs] == [False, False, True, True] + [False] * len(relative)
    assert [is_relative_noise(s) for s in specs] == [False] * 4 + [True] * len(relative)
    with pytest.raises(ValueError, match="unknown defences"):
        defence_grid(["dp"])
    assert attack_names(2, "sum") == [
        "direct_label_inference",
        "norm_scoring",
        "direction_scoring",
        "batch_label_inference",
        "passive_model_completion",
        "adaptive_label_inference",
        "gradient_clustering",
    ]
    assert attack_names(10, "mlp") == ["batch_label_inference", "passive_model_completion", "gradient_clustering"]
    tuned = defence_grid(["randomised_label", "marvell", "coae_noise"], [])
    assert [s.label for s in tuned] == [
        "none",
        "coae_noise σ=0.01",
        "randomised_label ε=0",
        "randomised_label ε=0.3",
        "randomised_label ε=0.5",
        "randomised_label ε=0.8",
        "marvell s=16",
        "marvell s=64",
    ]
    fmnist, binary_mlp = FULL_SETTINGS[-1], FULL_SETTINGS[1]
    assert not applies(tuned[-1], fmnist, 10) and applies(tuned[-1], binary_mlp, 2)  # Marvell: binary only
    assert applies(tuned[2], fmnist, 10) and not applies(tuned[2], binary_mlp, 2)  # randomised labels: sum top


def test_worst_case_and_pareto_front(tmp_path: Path) -> None:
    records = [
        record("none", 0, 0.85, {"DLI": 1.0, "PMC": 0.7}),
        record("coae", 0, 0.80, {"DLI": 0.0, "GC": 0.95, "PMC": 0.6}),
        record("gaussian", 0, 0.84, {"DLI": 0.2, "GC": 0.25, "PMC": 0.5}, {"scale": 0.01}),
        record("randomised_label", 0, 0.83, {"DLI": 0.15, "GC": 0.12, "PMC": 0.3}, {"epsilon": 0.5}),
    ]
    for entry in records[:1]:
        entry["attacks"]["GC"] = {"ap": 1.0, "ap_adaptive": 1.0, "below_chance": 0.0}
    rows = summarise(records)["toy/sum"]
    worst = {r["label"]: r["worst_case"][0] for r in rows}
    assert worst == {"none": 1.0, "coae λ=2": 0.95, "gaussian σ=0.01": 0.5, "randomised_label ε=0.5": 0.3}
    assert rows[2]["worst_case_gradient"][0] == pytest.approx(0.25)  # PMC left out
    # DCS of the worst case: gaussian loses 1 point for AP 0.5 -> 1 / (1 + sqrt(0.5 * 0.25 + 0.5 * 0.0001)).
    assert rows[2]["dcs_worst_case"][0] == pytest.approx(1 / (1 + math.sqrt(0.5 * 0.25 + 0.5 * 0.01**2)))
    # CoAE loses to gaussian on both axes; the others each win one.
    assert pareto_front(rows) == ["randomised_label ε=0.5", "gaussian σ=0.01", "none"]
    table = worst_case_table(rows)
    assert "0.950±0.000 (GC)" in table and table.count("| yes |") == 3
    plot_pareto({"toy/sum": rows}, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_target_lines_name_the_defences_that_meet_it_or_the_closest_on_each_side() -> None:
    records = [
        record("none", 0, 0.85, {"DLI": 1.0, "PMC": 0.7}),
        record("gaussian", 0, 0.84, {"DLI": 0.35, "PMC": 0.5}, {"scale": 0.01}),  # within 2 pt, AP too high
        record("gaussian", 0, 0.80, {"DLI": 0.15, "PMC": 0.4}, {"scale": 0.1}),  # 5 pt lost
        record("randomised_label", 0, 0.835, {"DLI": 0.19, "PMC": 0.45}, {"epsilon": 0.5}),
    ]
    lines = target_lines(summarise(records))
    every, gradient = lines[1], lines[2]
    # Over every attack nothing reaches AP 0.20; of the two within 2 pt, randomised_label has the lower worst case.
    assert "every attack" in every and "**does not hold**" in every
    assert "lowest AP within the MP budget randomised_label ε=0.5 (AP 0.450" in every
    assert "cheapest within the AP limit" not in every
    # Over the gradient attacks randomised_label (0.19 at 2 pt) meets it, gaussian 0.1 (0.15 at 5 pt) does not.
    assert gradient.endswith("**holds** for randomised_label ε=0.5 (AP 0.190±0.000, MP loss +1.5 pt).")
    records[3]["mp"] = 0.82  # now 3 pt: the cheapest defence within the AP limit is named instead
    gradient = target_lines(summarise(records))[2]
    assert "**does not hold**" in gradient and "cheapest within the AP limit randomised_label ε=0.5" in gradient
    assert "lowest AP within the MP budget gaussian σ=0.01 (AP 0.350" in gradient


def test_protocol_leak_line_judges_model_completion_against_the_attacker_alone() -> None:
    records = [
        record("none", 0, 0.85, {"DLI": 1.0, "PMC": 0.7}),
        record("gaussian", 0, 0.84, {"DLI": 0.15, "PMC": 0.62}, {"scale": 0.01}),  # PMC above the attacker alone
        record("randomised_label", 0, 0.835, {"DLI": 0.19, "PMC": 0.55}, {"epsilon": 0.5}),
    ]
    summary = summarise(records)
    assert len(target_lines(summary)) == 3  # without the attacker alone, no third line
    leak = target_lines(summary, {"toy/sum": 0.58})[3]
    assert "model completion ≤ the attacker alone, 0.580" in leak
    assert "**holds** for randomised_label ε=0.5 (AP 0.190±0.000, MP loss +1.5 pt) with model completion 0.550" in leak
    assert "gaussian" not in leak
    # The attacker alone above the AP limit: the whole-suite target is out of reach, and is said to be.
    assert "out of reach of any defence here: the attacker alone already reaches 0.580 > 0.20" in leak
    leak = target_lines(summary, {"toy/sum": 0.5})[3]
    assert "**does not hold**" in leak


def test_attacker_alone_reads_the_label_from_the_attackers_own_columns_only() -> None:
    """Model completion on raw columns: high where the attacker's half holds the label, chance where it does not."""
    from dataclasses import dataclass

    import torch

    from benchmarks.vfl.grid import Setting
    from benchmarks.vfl.run import attacker_alone

    @dataclass
    class Data:
        x_train: torch.Tensor
        y_train: torch.Tensor
        x_test: torch.Tensor
        y_test: torch.Tensor
        num_classes: int = 2
        input_shape: tuple[int, ...] = (4,)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=generator)
    setting = Setting("breast_cancer", "sum", epochs=1, batch_size=32, lr=1e-3)  # the data below replaces it
    for column, expect_high in ((0, True), (3, False)):  # halves: the attacker holds columns 0-1
        y = (x[:, column] > 0).long()
        ap = attacker_alone(setting, 0, Data(x[:500], y[:500], x[500:], y[500:]))
        assert (ap > 0.9) if expect_high else (ap < 0.65), (column, ap)


def test_probe_reads_defence_parameters_and_scores_the_worst_gradient_attack_against_none() -> None:
    from benchmarks.vfl.probe import parse_spec, summary_rows

    spec = parse_spec(["gaussian", "scale=0.003", "clip_norm=0.001"])
    assert spec == DefenceSpec("gaussian", (("clip_norm", 0.001), ("scale", 0.003)))
    assert spec.label == "gaussian σ=0.003, clip 0.001" and DefenceSpec("gaussian", (("scale", 0.003),)).label == (
        "gaussian σ=0.003"
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_spec(["gaussian", "0.003"])
    relative = parse_spec(["gaussian", "scale=10", "relative=true"])
    assert relative == DefenceSpec("gaussian", (("relative", True), ("scale", 10.0)))
    assert relative.label == "gaussian σ=10 × row norm"
    bins = parse_spec(["dcae", "bin_numbers=6"]).params  # a whole number stays one: the config refused 6.0
    assert bins == (("bin_numbers", 6),) and isinstance(bins[0][1], int)

    def record(label: str, seed: int, mp: float, gc: float, pmc: float) -> dict[str, Any]:
        aps = {"GC": gc, "BLI": 0.1, "PMC": pmc}
        attacks = {a: {"ap_adaptive": v, "ap": v, "below_chance": 0.0} for a, v in aps.items()}
        defence = "none" if label == "none" else "gaussian"
        return {"setting": "fashion_mnist/sum", "defence": defence, "label": label, "params": {}, "seed": seed,
                "num_classes": 10, "mp": mp, "accuracy": mp, "attacks": attacks}  # fmt: skip

    records = [record("none", 0, 0.84, 1.0, 0.7), record("none", 1, 0.82, 1.0, 0.7)]
    records += [record(spec.label, 0, 0.80, 0.3, 0.9), record(spec.label, 1, 0.80, 0.1, 0.9)]
    rows = summary_rows(records, ["none", spec.label])
    # MP loss per seed against that seed's none (4 and 2 points); model completion is not a gradient attack.
    assert rows[1] == [spec.label, "2", "0.8000 ± 0.0000", "3.0", "0.200 ± 0.141"]
    assert rows[0][3] == "0.0" and rows[0][4].startswith("1.000")


def test_report_states_both_noise_sweeps() -> None:
    from benchmarks.vfl.report import RunInfo, render_report

    rows = _sweep(0.05, 0.89, [(0.01, 0.5, 0.90), (0.1, 0.11, 0.82)], relative=((10.0, 0.2, 0.87),))
    specs = [DefenceSpec("none"), DefenceSpec("coae", (("entropy_weight", 2.0),))]
    specs += [DefenceSpec("gaussian", (("scale", s),)) for s in (0.01, 0.1)]
    specs.append(DefenceSpec("gaussian", (("relative", True), ("scale", 10.0))))
    info = RunInfo("cmd", "2026-12-01", [FULL_SETTINGS[0]], [0, 1], specs, quick=True)
    text = render_report({"toy/sum": rows}, info, "plot.png")
    assert "(Gaussian σ and Laplace b, per gradient entry, no clipping): [0.01, 0.1]; Gaussian noise relative" in text
    assert "at σ = [10.0]" in text
    assert "| gaussian σ=10 × row norm |" in text


def test_only_the_whole_grid_replaces_the_committed_report_unless_told(tmp_path: Path) -> None:
    from benchmarks.common import REPO_ROOT
    from benchmarks.vfl.__main__ import parse_args, report_location

    committed = (REPO_ROOT / "BENCHMARKS.md").resolve()
    assert report_location(parse_args([]), tmp_path) == committed
    assert report_location(parse_args(["--seeds", "2", "0", "1"]), tmp_path) == committed  # the same grid
    for part in (["--datasets", "credit"], ["--quick"], ["--seeds", "0"], ["--exclude", "credit/mlp"]):
        assert report_location(parse_args(part), tmp_path) == (tmp_path / "BENCHMARKS.md").resolve(), part
    told = tmp_path / "mine.md"
    assert report_location(parse_args(["--datasets", "credit", "--report", str(told)]), tmp_path) == told.resolve()


def test_a_resumed_training_is_reused_only_with_its_parameters_and_autoencoder() -> None:
    from benchmarks.vfl.run import reusable

    coae = DefenceSpec("coae", (("entropy_weight", 0.5),))
    record = {"params": {"entropy_weight": 0.5}, "autoencoder_seed": 1, "autoencoder_epochs": 30}
    assert reusable(record, coae, seed=1, shared_seed=None, ae_epochs=30)
    assert not reusable(record, DefenceSpec("coae", (("entropy_weight", 1.0),)), 1, None, 30)  # the label hides it
    assert not reusable(record, coae, seed=1, shared_seed=0, ae_epochs=30)  # now one autoencoder serves every seed
    assert not reusable(record, coae, seed=1, shared_seed=None, ae_epochs=2)  # a --quick autoencoder
    older = {"params": {"entropy_weight": 0.5}, "autoencoder_seed": 1}  # before the epochs were kept
    assert reusable(older, coae, seed=1, shared_seed=None, ae_epochs=30)
    noise = DefenceSpec("gaussian", (("scale", 0.1),))
    assert reusable({"params": {"scale": 0.1}, "autoencoder_seed": None}, noise, 0, 0, 30)
    assert not reusable({"params": {"scale": 0.2}, "autoencoder_seed": None}, noise, 0, None, 30)


def test_a_confusion_defence_is_at_chance_only_when_every_gradient_attack_is() -> None:
    """CoAE that beats DLI and BLI but not the adaptive attacks, or pushes DLI far below chance, does not hold."""
    none = record("none", 0, 0.85, {"DLI": 1.0, "BLI": 1.0, "ALI": 1.0, "GC": 1.0})
    beaten = record("coae", 0, 0.85, {"DLI": 0.11, "BLI": 0.09, "ALI": 0.12, "GC": 0.10}, {"lam": 2.0})
    line = expectations(summarise([none, beaten]))[0]
    assert "toy/sum, coae λ=2: every gradient attack" in line and "**holds**" in line
    adaptive = record("coae", 0, 0.85, {"DLI": 0.11, "BLI": 0.09, "ALI": 0.92, "GC": 0.93}, {"lam": 2.0})
    line = expectations(summarise([none, adaptive]))[0]
    assert "**does not hold**" in line and line.endswith("not at chance: ALI, GC.")
    below = record("coae", 0, 0.85, {"DLI": 0.0, "BLI": 0.1, "ALI": 0.1, "GC": 0.1}, {"lam": 2.0})
    line = expectations(summarise([none, below]))[0]
    assert "**does not hold**" in line and "DLI AP 0.000±0.000 (below chance by 0.100)" in line
    assert line.endswith("not at chance: DLI.")
