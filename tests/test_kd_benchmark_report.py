"""The KD benchmark's statistics, verdicts and report (``benchmarks/kd``) on hand-made rows (no training)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from benchmarks.kd.expectations import expectations_section, verdict_text
from benchmarks.kd.report import bytes_section, render_report
from benchmarks.kd.statistics import SeedRun, compare_runtimes, final, kd_rows, pm
from tests.kd_configs import tiny_config

TIERS = {0: "low", 1: "low", 2: "high", 3: "high"}


def row(round: int, server: float, low: float, high: float, wall: float = 1.0, **extra: Any) -> dict[str, Any]:
    """One round's metrics: global and personalised client accuracy per tier (personalised = global + 0.1)."""
    values: dict[str, Any] = {"round": round, "server_acc": server, "wall_seconds": wall}
    for prefix, shift in (("client_acc", 0.0), ("client_pacc", 0.1)):
        values |= {f"{prefix}_low_mean": low + shift, f"{prefix}_high_mean": high + shift}
        values[f"{prefix}_mean"] = (low + high) / 2 + shift
    values |= {"uplink_bytes": 4000, "downlink_bytes": 8000, "num_answered": 50}
    return values | extra


def seed_run(seed: int, kd: list[dict[str, Any]], local: list[dict[str, Any]], flower: bool = True) -> SeedRun:
    """Both runtimes give ``kd``; the local-only baseline gives ``local``; the transfer-only server 0.5."""
    server_only = [{"round": r["round"], "server_acc": 0.5, "wall_seconds": 0.5} for r in kd]
    return SeedRun(
        seed=seed,
        flower=[dict(r) for r in kd] if flower else [],
        inprocess=[dict(r) for r in kd],
        local_only=local,
        server_only=server_only,
        total_seconds={"flower": 5.0, "inprocess": 3.0, "local_only": 1.0, "server_only": 1.0},
        tiers=dict(TIERS),
        tier_models={"low": "cnn_tiny", "high": "cnn_medium"},
        weight_nbytes={0: 8000, 1: 8000, 2: 40000, 3: 40000},
        num_selected=[4] * len(kd),
    )


def two_seeds(flower: bool = True) -> list[SeedRun]:
    return [
        seed_run(0, [row(1, 0.6, 0.3, 0.4), row(2, 0.8, 0.5, 0.6)], [row(1, 0, 0.2, 0.3), row(2, 0, 0.3, 0.4)], flower),
        seed_run(1, [row(1, 0.6, 0.3, 0.4), row(2, 0.7, 0.5, 0.4)], [row(1, 0, 0.2, 0.3), row(2, 0, 0.3, 0.5)], flower),
    ]


def test_pm_and_final_values_over_seeds() -> None:
    runs = two_seeds()
    assert final(runs, "server_acc", "kd") == [0.8, 0.7]
    assert final(runs, "client_acc_high_mean", "local_only") == [0.4, 0.5]
    assert pm([0.8, 0.7]) == "0.7500 ± 0.0707"
    assert pm([0.8]) == "0.8000 ± 0.0000"
    with pytest.raises(ValueError, match="which"):
        final(runs, "server_acc", "flower")


def test_kd_rows_prefer_flower_and_fall_back_to_the_inprocess_runner() -> None:
    run = two_seeds()[0]
    assert kd_rows(run) is run.flower
    run.flower = []
    assert kd_rows(run) is run.inprocess


def test_compare_runtimes_ignores_timing_and_names_each_difference() -> None:
    runs = two_seeds()
    runs[0].flower[0]["wall_seconds"] = 99.0
    assert compare_runtimes(runs) == (True, [])
    runs[1].flower[1]["server_acc"] = 0.71
    matched, differences = compare_runtimes(runs)
    assert not matched
    assert differences == ["seed 1 round 2: server_acc Flower 0.71 vs in-process 0.7"]
    runs[0].flower.pop()
    assert "seed 0: 1 Flower rounds vs 2 in-process" in compare_runtimes(runs)[1]


def test_verdict_text_calls_out_a_pass_on_the_mean_only() -> None:
    assert verdict_text(True, 3, 3) == "holds"
    assert verdict_text(True, 2, 3) == "holds on the mean only (2 of 3 seeds)"
    assert verdict_text(False, 1, 3) == "MISSED (1 of 3 seeds pass)"


def test_expectations_compare_per_tier_and_per_seed() -> None:
    lines, results = expectations_section(two_seeds(), matched=True)
    text = "\n".join(lines)
    # Server 0.75 on the mean, above the best tier (low, 0.5); seed 1's server 0.7 is above its best tier 0.5.
    assert "Server above the best client tier: **holds**" in text
    # High tier: KD 0.5 vs local-only 0.45 on the mean -> holds; low: 0.5 vs 0.3.
    assert results["expectations"]["clients_above_local_only"] == {
        "low/client_acc": True,
        "high/client_acc": True,
        "low/client_pacc": True,
        "high/client_pacc": True,
    }
    assert results["expectations"]["server_above_transfer_only"] is True
    assert "- Flower = in-process: **holds**." in lines
    lines, _ = expectations_section(two_seeds(flower=False), matched=None)
    assert not any("Flower = in-process" in line for line in lines)


def test_bytes_section_puts_logits_per_client_against_tier_weights() -> None:
    lines, results = bytes_section(two_seeds(), transfer_size=60)
    text = "\n".join(lines)
    # 4000 uplink bytes over 4 selected clients: 1000 per client; the high tier's weights are 40x that.
    assert results["bytes"]["uplink_logits_per_client"] == {"mean": 1000.0, "first": 1000.0, "last": 1000.0}
    assert "| high | cnn_medium | 40,000 | 1,000 | 1,000 | 1,000 | 40.0x |" in text
    assert "Queried transfer samples per round: 50.0 ± 0.0 (of 60;" in text


def test_render_report_has_every_section_and_json_numbers() -> None:
    started = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    report, results = render_report(two_seeds(), tiny_config(), "python -m benchmarks.kd --seeds 0 1", started, "x")
    for heading in (
        "# Selective-KD benchmark",
        "## Server accuracy per round",
        "## Client accuracy per tier",
        "## Uplink per client per round",
        "## Wall seconds",
        "## Expectations",
    ):
        assert heading in report
    assert "- command: `python -m benchmarks.kd --seeds 0 1`" in report
    assert "| 2 | 0.7500 ± 0.0707 | 0.7500 ± 0.0707 | 0.5000 ± 0.0000 |" in report
    assert "**Flower and in-process runs matched exactly**" in report
    assert "| **all** | - | 4 |" in report
    assert "tiers low (cnn_tiny, share 0.5, 1 local epochs" in report
    assert results["runtimes_match"] is True
    assert results["seeds"] == [0, 1]
    assert set(results["wall_seconds"]) == {"flower", "inprocess", "local_only", "server_only"}
    report, results = render_report(two_seeds(flower=False), tiny_config(), "cmd", started, "x")
    assert "Flower was skipped" in report
    assert results["runtimes_match"] is None
    assert "flower" not in results["wall_seconds"]
