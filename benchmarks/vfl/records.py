"""The run folder of the VFL benchmark: one record per training in ``records.jsonl`` and the run's start.

Both survive an interrupted run, so ``--resume`` (or several processes sharing ``--out``) skip finished trainings
and the report still states the real elapsed time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RECORDS_NAME = "records.jsonl"

#: A finished training's key: ``(setting key, defence label, seed)``.
RecordKey = tuple[str, str, int]


def load_records(path: Path, valid: Callable[[Mapping[str, Any]], bool]) -> dict[RecordKey, dict[str, Any]]:
    """Finished records of an earlier (interrupted) run that still fit the plan."""
    done: dict[RecordKey, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if valid(record):
                    done[(record["setting"], record["label"], int(record["seed"]))] = record
    return done


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append one finished training, so that an interrupted run keeps it."""
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_start(out: Path, fresh: bool) -> tuple[float, str]:
    """Start of the whole run as ``(unix time, UTC text)``, kept in ``<out>/run_start.json``.

    A fresh run records now; a ``--resume`` run (or one of several invocations sharing ``--out``, e.g. one per
    dataset in parallel) keeps the first recorded start, so the report's wall time is the real elapsed time of
    all of them together.
    """
    path = out / "run_start.json"
    if not fresh and path.exists():
        saved = json.loads(path.read_text())
        return float(saved["unix"]), str(saved["utc"])
    now = time.time()
    utc = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(json.dumps({"unix": now, "utc": utc}))
    return now, utc
