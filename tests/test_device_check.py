"""The accelerator check (``benchmarks.device_check``) on the CPU: it must run, compare and flag what it should.

On a machine with CUDA the same command runs every strategy there (BENCHMARKS_KD.md, "On a GPU"); here it checks
the script itself, so it cannot rot between the sessions that have a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import device_check


def test_check_passes_a_repeatable_strategy_and_records_it(tmp_path: Path) -> None:
    code = device_check.main(["--device", "cpu", "--rounds", "1", "--strategies", "fedavg", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads((tmp_path / "results.json").read_text())
    (result,) = record["results"]
    assert result["strategy"] == "fedavg" and result["errors"] == []
    assert result["repeatable"] and result["finite"]
    assert result["device"]["rounds"][0]["server_acc"] == result["cpu"]["rounds"][0]["server_acc"]


def test_check_reports_a_failing_run_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An unknown override fails at composition: the check must say so, carry on and exit 1.
    args = ["--device", "cpu", "--rounds", "1", "--strategies", "fedavg", "--override", "no_such_key=1"]
    code = device_check.main([*args, "--out", str(tmp_path)])
    assert code == 1
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(result["errors"]) == 3
    assert "FAIL" in capsys.readouterr().out


def test_runs_that_differ_on_the_device_fail_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # A device whose second run drifts from the first (non-deterministic kernels) must fail, not pass quietly.
    calls = iter([0.5, 0.6, 0.5])

    def drifting(name: str, device: str, rounds: int, seed: int, extra: object) -> dict[str, object]:
        return {"rounds": [{"round": 1, "server_acc": next(calls), "wall_seconds": 1.0}], "seconds": 1.0}

    monkeypatch.setattr(device_check, "run_once", drifting)
    result = device_check.check_strategy("fedavg", "cpu", 1, 0, [])
    assert result["errors"] == [] and result["finite"]
    assert not result["repeatable"]


def test_timings_are_left_out_of_the_comparison() -> None:
    rows = [{"round": 1, "server_acc": 0.5, "wall_seconds": 1.0, "sim_seconds_low": 2.0}]
    assert device_check.comparable(rows) == [{"round": 1, "server_acc": 0.5}]


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for machines without it")
    with pytest.raises(SystemExit, match="sees no CUDA device"):
        device_check.main(["--device", "cuda"])
