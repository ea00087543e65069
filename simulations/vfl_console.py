"""What `fl-kd-vfl` shows a person: one line per epoch and a final table; everything else goes to the log file.

A Flower simulation runs in other processes whose output (Flower's start-up banner, the log stream, Ray) is
written to file descriptors 1 and 2; :func:`quiet_console` points those at the run folder's log file for the
duration of the run, and :func:`follow_progress` echoes the epoch rows the ServerApp writes as it trains.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

Report = Callable[[dict[str, Any]], None]


def epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """One epoch as a console line, e.g. ``epoch 2/5  loss 0.0851  skipped 0  2.4 s  MP 0.9474``."""
    loss = row.get("loss")
    parts = [
        f"epoch {int(row['epoch']) + 1}/{epochs}",
        f"loss {loss:.4f}" if isinstance(loss, float) else "loss -",
        f"skipped {row.get('skipped_batches', 0)}",
        f"{float(row.get('seconds', 0.0)):.1f} s",
    ]
    if row.get("mp") is not None:
        parts.append(f"MP {row['mp']:.4f}")
    return "  ".join(parts)


@contextmanager
def quiet_console(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr (this process and its children) to ``log_path``.

    Yields a stream to the real console, for the lines a person should see.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            os.dup2(log_fd, fd)
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)
        console.close()


@contextmanager
def follow_progress(path: Path, report: Report | None, interval: float = 0.5) -> Iterator[None]:
    """Call ``report`` with each JSON row appended to ``path`` while the block runs (and with any left at its end)."""
    path.unlink(missing_ok=True)
    if report is None:
        yield
        return
    done = threading.Event()
    offset = 0

    def read_new() -> None:
        nonlocal offset
        if not path.exists():
            return
        with path.open() as stream:
            stream.seek(offset)
            while True:
                line = stream.readline()
                if not line.endswith("\n"):
                    break  # a row still being written: read it next time
                offset = stream.tell()
                report(json.loads(line))

    def loop() -> None:
        while not done.wait(interval):
            read_new()

    thread = threading.Thread(target=loop, name="fl-kd-vfl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        read_new()


def print_vfl_summary(results: Mapping[str, Any], title: str, file: TextIO | None = None) -> None:
    """Terminal tables: main task, then one row per attack with AP and DCS."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))

    main = Table(title=title)
    main.add_column("quantity")
    main.add_column("value", justify="right")
    epochs = len(results.get("train_loss", [])) or 1
    rows = [
        ("MP (test accuracy)", results.get("mp")),
        ("AUC", results.get("auc")),
        ("final train loss", (results.get("train_loss") or [None])[-1]),
        ("skipped batches", results.get("skipped_batches")),
        ("refused gradients", results.get("failed_updates")),
        ("training samples", results.get("num_train")),
        ("seconds per epoch", results.get("train_seconds", 0.0) / epochs),
        ("MP*", results.get("mp_star")),
    ]
    for label, value in rows:
        main.add_row(label, fmt(value))
    console = Console(width=140, file=file)
    console.print(main)
    if not results.get("attacks"):
        return
    attacks = Table(title="attacks")
    for column in ("attack", "AP", "AP adaptive", "DCS", "DCS adaptive", "note"):
        attacks.add_column(column, justify="left" if column in ("attack", "note") else "right")
    scores = results.get("dcs", {}).get("per_attack", {})
    for name, result in results["attacks"].items():
        score = scores.get(name, {})
        attacks.add_row(
            name,
            fmt(result.get("ap")),
            fmt(result.get("ap_adaptive")),
            fmt(score.get("dcs")),
            fmt(score.get("dcs_adaptive")),
            str(result.get("error", "")),
        )
    console.print(attacks)
