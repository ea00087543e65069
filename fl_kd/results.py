"""Run outputs: per-round metrics (JSONL and CSV), a summary JSON, plots (drawn by `fl_kd.plots`) and a terminal table.

Both runtimes (the Flower simulation and the in-process reference runner) write through this module, so a run
folder looks the same whichever produced it, and sweeps can be tabulated without knowing the runtime.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_kd.config import ConfigError
from fl_kd.plots import plot_run

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
SERVER_LOG = "server.log"
"""The ServerApp's own log (Flower's metric dumps); it touches it first, the launcher's sign that it is up."""
SERVER_ERROR_JSON = "server_error.json"
"""What a ServerApp that raised leaves in the run folder, for the command that launched it to report."""


class RoundRecorder:
    """Append one flat dict of metrics per round to ``metrics.jsonl`` as the run goes.

    Appending line by line means a run that is stopped half-way still leaves every finished round on disk.
    """

    def __init__(self, out_dir: Path | str) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / METRICS_JSONL
        self.path.write_text("")
        self.rows: list[dict[str, Any]] = []

    def record(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics (JSON scalars only)."""
        clean = {key: _json_scalar(value) for key, value in row.items()}
        self.rows.append(clean)
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean, sort_keys=True) + "\n")


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(out_dir: Path | str) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` in a run folder, in round order.

    Raises
    ------
    ValueError
        Naming the file and line: a line that is no JSON object with a round number >= 1 (a run stopped mid-write
        leaves its last line cut short), a figure that is no number (or null), or a round written twice.
    """
    path = Path(out_dir) / METRICS_JSONL
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a JSON row (cut short?)") from None
        round_number = row.get("round") if isinstance(row, dict) else None
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
            raise ValueError(f"{path}:{number}: a row without a round number >= 1")
        other = next((key for key, value in row.items() if not isinstance(value, (int, float, type(None)))), None)
        if other is not None:  # every figure of a row is a number (null: JSON's NaN); a reader would stop at it
            raise ValueError(f"{path}:{number}: {str(other)[:40]} is no number")
        rows.append(row)
    rows.sort(key=lambda row: row["round"])
    for before, after in zip(rows, rows[1:], strict=False):
        if before["round"] == after["round"]:
            raise ValueError(f"{path}: round {after['round']} is written twice")
    return rows


def finished_rounds(out_dir: Path | str, exit_code: int, rounds: int) -> list[dict[str, Any]] | None:
    """The rows of a Flower run that exited with 0, left each of rounds ``1..rounds`` on disk and then its summary;
    else None.

    ``flwr run`` exits 0 whatever became of the run, and the last round's row is written before the ServerApp saves
    the server and the summary: a ServerApp killed in between (out of memory, a full disk) left every row and no
    ``summary.json``, or one of an earlier attempt, older than the rows.
    """
    path, summary = Path(out_dir) / METRICS_JSONL, Path(out_dir) / SUMMARY_JSON
    try:
        rows = read_metrics(out_dir) if path.exists() else []
    except ValueError:  # a line cut short: the run did not finish writing
        return None
    complete = [row["round"] for row in rows] == list(range(1, rounds + 1))
    summarised = summary.exists() and path.exists() and summary.stat().st_mtime_ns >= path.stat().st_mtime_ns
    return rows if exit_code == 0 and complete and summarised else None


def record_server_error(out_dir: Path | str, error: BaseException, user_error: bool) -> None:
    """Leave ``error`` in the run folder: Flower's ``flwr run`` exits 0 whatever the ServerApp raised, and its own
    log holds the traceback among Flower's lines, where a user would not look for a setting to change."""
    record = {"error_type": type(error).__name__, "message": str(error), "user_error": user_error}
    (Path(out_dir) / SERVER_ERROR_JSON).write_text(json.dumps(record) + "\n")


def server_error(out_dir: Path | str) -> dict[str, Any] | None:
    """What :func:`record_server_error` left in ``out_dir``, or None (none left, or unreadable); a user's mistake
    is raised as the ``ConfigError`` it was, so the launching command ends in its one line as it would in-process."""
    try:
        record = json.loads((Path(out_dir) / SERVER_ERROR_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("user_error"):
        raise ConfigError(str(record.get("message")))
    return record


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path | str) -> None:
    """Write rows to CSV with the union of their keys as columns (``round`` first)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    if "round" in keys:
        keys.remove("round")
        keys.insert(0, "round")
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(
    out_dir: Path | str, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], title: str | None = None
) -> None:
    """CSV, summary JSON and plots for a finished run.

    Parameters
    ----------
    out_dir : Path | str
        The run folder.
    rows : Sequence[Mapping[str, Any]]
        One flat dict of metrics per round.
    summary : Mapping[str, Any]
        Final figures of the run (non-finite floats are written as ``null``).
    title : str | None (default: None)
        What ran, shown above the plots: ``fl_kd.plots.run_title(to_mapping(experiment))``.
    """
    out = Path(out_dir)
    write_csv(rows, out / METRICS_CSV)
    (out / SUMMARY_JSON).write_text(
        json.dumps({k: _json_scalar(v) for k, v in summary.items()}, indent=2, sort_keys=True)
    )
    if rows:
        plot_run(rows, out, title=title)


def format_round_line(row: Mapping[str, Any]) -> str:
    """One terminal line per round."""
    parts = [f"round {row.get('round')}"]
    for key, label in (
        ("server_acc", "server"),
        ("client_acc_mean", "clients"),
        ("uplink_bytes", "up"),
        ("downlink_bytes", "down"),
        ("wall_seconds", "s"),
    ):
        value = row.get(key)
        if value is None:
            continue
        if key.endswith("_bytes"):
            parts.append(f"{label} {value / 1e3:.1f} kB")
        elif key == "wall_seconds":
            parts.append(f"{value:.2f} {label}")
        else:
            parts.append(f"{label} {value:.4f}")
    # Answers the server left out are part of the round's story: a round without any would look like a good one.
    for key, label in (
        ("n_rejected", "answers rejected"),
        ("n_missing", "clients without an answer"),
        ("n_eval_dropped", "evaluate replies dropped"),
    ):
        if row.get(key):
            parts.append(f"{label} {row[key]}")
    return " | ".join(parts)


_TABLE_COLUMNS = {
    "round": "round",
    "server_acc": "server acc",
    "client_acc_mean": "client acc",
    "client_pacc_mean": "client acc (own)",
    "uplink_bytes": "up kB",
    "downlink_bytes": "down kB",
    "n_self": "self",
    "n_cache": "cache",
    "n_clients": "clients",
    "n_ce_only": "CE only",
    "n_rejected": "rejected",
}


def print_summary_table(rows: Sequence[Mapping[str, Any]], title: str = "fl-kd run") -> None:
    """A final table of per-round accuracy, traffic and where the server's knowledge came from (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = [key for key in _TABLE_COLUMNS if any(key in row for row in rows)]  # a figure of some rounds only too
    for key in columns:
        table.add_column(_TABLE_COLUMNS[key], justify="right")
    for row in rows:
        cells = []
        for key in columns:
            value = row.get(key)
            if key.endswith("_bytes") and value is not None:
                cells.append(f"{value / 1e3:.1f}")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}")
            else:
                cells.append("" if value is None else str(value))
        table.add_row(*cells)
    Console(width=140).print(table)
