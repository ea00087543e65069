"""Run outputs and sweep tables: what a user reads after a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from fl_kd.results import RoundRecorder, read_metrics, write_outputs
from fl_kd.simulations.sweep import collect, main, table


def _rows(acc: list[float]) -> list[dict[str, float | int]]:
    return [{"round": i + 1, "server_acc": a, "uplink_bytes": 100 * (i + 1)} for i, a in enumerate(acc)]


def test_recorder_appends_and_outputs_are_written(tmp_path: Path) -> None:
    recorder = RoundRecorder(tmp_path)
    for row in _rows([0.5, 0.75]):
        recorder.record(row)
    assert read_metrics(tmp_path) == _rows([0.5, 0.75])
    write_outputs(tmp_path, recorder.rows, {"final_server_acc": 0.75, "nan_figure": float("nan")})
    with (tmp_path / "metrics.csv").open() as handle:
        assert [row["server_acc"] for row in csv.DictReader(handle)] == ["0.5", "0.75"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"final_server_acc": 0.75, "nan_figure": None}  # NaN is not valid JSON
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and (tmp_path / "bytes.png").stat().st_size > 0


def _job(folder: Path, overrides: list[str], final_acc: float) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    recorder = RoundRecorder(folder)
    for row in _rows([final_acc / 2, final_acc]):
        recorder.record(row)
    (folder / "summary.json").write_text(json.dumps({"final_server_acc": final_acc}))


def test_sweep_table_groups_seeds_and_names_what_varies(tmp_path: Path) -> None:
    _job(tmp_path / "0", ["strategy.rounds=2", "partition.alpha=0.1", "seed=0"], 0.4)
    _job(tmp_path / "1", ["strategy.rounds=2", "partition.alpha=0.1", "seed=1"], 0.6)
    _job(tmp_path / "2", ["strategy.rounds=2", "partition.alpha=10", "seed=0"], 0.9)
    jobs = collect(tmp_path)
    markdown = table(jobs)
    assert "All jobs: `strategy.rounds=2`" in markdown
    assert "| partition.alpha=0.1 | 2 | 0.5 ± 0.14 |" in markdown
    assert "| partition.alpha=10 | 1 | 0.9 |" in markdown
    main([str(tmp_path)])
    assert (tmp_path / "sweep.md").read_text() == markdown
    assert (tmp_path / "sweep.png").is_file()
