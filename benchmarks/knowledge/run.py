"""Run one job of the knowledge benchmark into its own folder, in a worker process of its own."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import code_digest
from benchmarks.kd.grid import compose_config
from benchmarks.knowledge.grid import Job, resolved
from fl_kd.kd.baselines import run_local_only, run_pseudo_label_server, run_transfer_only_server
from fl_kd.kd.metrics import Metrics
from fl_kd.kd.runner import run_inprocess
from fl_kd.results import RoundRecorder

RESULT_FILE = "result.json"

#: Centralised training of the server model on all 60,000 training images (the ceiling).
CEILING_EPOCHS = 10


def result_path(out: Path, job: Job) -> Path:
    """Where a finished job's record lives; its existence means the job is done."""
    return out / job.name / RESULT_FILE


def read_result(out: Path, job: Job) -> dict[str, Any] | None:
    """The job's record, or None when it has not finished or ran other settings than the job now has.

    The second guards a changed grid: a record whose overrides leave other settings than the job's (say, FedGEMS
    before an extension was added to it) is not this job's result, and the job counts as not run.
    """
    path = result_path(out, job)
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    if "overrides" in record and resolved(record["overrides"]) != resolved(job.hydra_overrides()):
        return None
    return record


def other_rounds(out: Path, rounds: int) -> list[str]:
    """Finished jobs under ``out`` that ran another number of rounds than ``rounds``, as ``"name (N rounds)"``.

    A job's name and overrides do not hold its rounds, so without this check a finished 8-round job would count as
    done in a 10-round run, and the tables would mix the two.
    """
    found = []
    for path in sorted(out.glob(f"*/*/*/{RESULT_FILE}")):
        ran = json.loads(path.read_text()).get("config", {}).get("strategy", {}).get("rounds")
        if ran is not None and ran != rounds:
            found.append(f"{path.parent.relative_to(out).as_posix()} ({ran} rounds)")
    return found


def codes(out: Path, jobs: Sequence[Job]) -> dict[str, list[str]]:
    """Of ``jobs``, those finished under ``out`` (as :func:`read_result` reads them: a record of other settings is
    rerun, not reported), by the code that ran them (:func:`benchmarks.common.code_digest`; "not recorded" for a
    job of before the digest was kept)."""
    found: dict[str, list[str]] = {}
    for job in jobs:
        if (record := read_result(out, job)) is not None:
            found.setdefault(str(record.get("code", "not recorded")), []).append(job.name)
    return found


def run_job(job: Job, rounds: int, out: Path) -> dict[str, Any]:
    """Run ``job`` with one torch thread; write ``metrics.jsonl`` as rounds end and ``result.json`` at the end."""
    torch.set_num_threads(1)
    folder = out / job.name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record: dict[str, Any] = {
        "job": {"method": job.method, "kind": job.kind, "setting": job.setting, "seed": job.seed},
        "overrides": job.hydra_overrides(),
        "code": code_digest(),
    }
    if job.kind == "ceiling":
        record |= _ceiling(job.seed)
    else:
        cfg = compose_config(job.seed, rounds, "inprocess", job.hydra_overrides())
        recorder = RoundRecorder(folder)

        def on_round(row: Metrics) -> None:
            recorder.record(row)

        if job.kind == "federated":
            rows = run_inprocess(cfg, on_round=on_round).rounds
        else:
            runner = {
                "local_only": run_local_only,
                "transfer_only": run_transfer_only_server,
                "pseudo_label": run_pseudo_label_server,
            }[job.kind]
            rows = runner(cfg, on_round=on_round)
        record |= {"rounds": rows, "config": json.loads(cfg.to_json())}
    record["seconds"] = time.perf_counter() - start
    path = result_path(out, job)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, default=float))
    os.replace(temporary, path)  # a killed job leaves no half-written result that would count as done
    return record


def _ceiling(seed: int) -> dict[str, Any]:
    from benchmarks.kd.ceiling import parse_args, run_ceiling

    args: argparse.Namespace = parse_args(["--epochs", str(CEILING_EPOCHS), "--seed", str(seed)])
    return {"ceiling": run_ceiling(args)}
