"""Run one job of the robustness benchmark in-process into its own folder; its ``result.json`` marks it done."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import code_digest
from benchmarks.kd.grid import compose_config
from benchmarks.robustness.grid import Job
from fl_kd.kd.runner import run_inprocess
from fl_kd.secret import SERVER_KEY_ENV

BENCHMARK_SERVER_KEY = "fl-kd robustness benchmark"
"""The server's key of every job (it keys the canaries' draw) unless FL_KD_SERVER_KEY is set: fixed, so that a job
reruns to the same numbers. No attacker of the grid reads it, as no client of a deployment could."""

RESULT_FILE = "result.json"


def read_result(out: Path, job: Job, rounds: int, quick: bool = False) -> dict[str, Any] | None:
    """The job's record, or None when it has not finished with these ``rounds``, data and settings."""
    path = out / job.name / RESULT_FILE
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record if mismatch(record, job, rounds, quick) is None else None


def mismatch(record: dict[str, Any], job: Job, rounds: int, quick: bool) -> str | None:
    """How a finished ``record`` in ``job``'s folder differs from the run asked for, or None when it is that run.

    Records written before the overrides were kept are matched on rounds and data alone.
    """
    if len(record["rounds"]) != rounds:
        return f"{len(record['rounds'])} rounds"
    if record.get("quick", False) != quick:
        return "--quick" if record.get("quick", False) else "not --quick"
    if "overrides" in record and record["overrides"] != job.overrides(quick):
        return "other settings"
    return None


def conflicts(out: Path, jobs: list[Job], rounds: int, quick: bool) -> list[str]:
    """Finished jobs in ``out`` that are another run than the one asked for, as ``"name (how)"``: running would
    overwrite them, hours of results, without a word."""
    found = []
    for job in jobs:
        path = out / job.name / RESULT_FILE
        if path.exists() and (how := mismatch(json.loads(path.read_text()), job, rounds, quick)) is not None:
            found.append(f"{job.name} ({how})")
    return found


def other_code(out: Path, jobs: list[Job], code: str) -> list[str]:
    """Finished jobs in ``out`` that code other than ``code`` ran (:func:`benchmarks.common.code_digest`), as
    ``"name (digest)"``: a job's name and settings do not show an edit, so they would join this code's rows."""
    found = []
    for job in jobs:
        path = out / job.name / RESULT_FILE
        if path.exists() and (ran := json.loads(path.read_text()).get("code", "not recorded")) != code:
            found.append(f"{job.name} ({ran})")
    return found


def run_job(job: Job, rounds: int, out: Path, quick: bool = False) -> dict[str, Any]:
    """Run ``job`` with one torch thread; the record holds every round's metrics and the config."""
    torch.set_num_threads(1)
    os.environ.setdefault(SERVER_KEY_ENV, BENCHMARK_SERVER_KEY)
    start = time.perf_counter()
    cfg = compose_config(job.seed, rounds, "inprocess", job.overrides(quick))
    rows = run_inprocess(cfg).rounds
    record = {
        "job": {"method": job.method, "adversary": job.adversary, "fraction": job.fraction, "seed": job.seed},
        "rounds": rows,
        "config": json.loads(cfg.to_json()),
        "seconds": time.perf_counter() - start,
        "quick": quick,
        "overrides": job.overrides(quick),
        "code": code_digest(),
    }
    path = out / job.name / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, default=float))
    os.replace(temporary, path)  # a killed job leaves nothing that would count as done
    return record
