"""Run outputs: what a user reads after a run (sweep tables: tests/test_sweep.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fl_kd.results import RoundRecorder, format_round_line, read_metrics, write_outputs


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


def test_the_round_line_shows_answers_the_server_left_out() -> None:
    """A resumed run whose clients all refused looks like any other round unless its line says so."""
    row = {"round": 2, "server_acc": 0.5, "uplink_bytes": 0, "wall_seconds": 1.0, "n_rejected": 0, "n_missing": 0}
    assert format_round_line(row) == "round 2 | server 0.5000 | up 0.0 kB | 1.00 s"
    line = format_round_line(row | {"n_rejected": 4, "n_missing": 4})
    assert line.endswith("| answers rejected 4 | clients without an answer 4")
