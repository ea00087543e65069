"""Run one seed of the KD benchmark: both runtimes and both baselines on the same federation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.kd.grid import compose_config
from benchmarks.kd.statistics import Row, SeedRun
from fl_kd.kd.baselines import model_weight_nbytes, run_local_only, run_transfer_only_server
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation, sample_clients
from fl_kd.results import RoundRecorder, format_round_line, read_metrics, write_csv
from fl_kd.simulations.run import run_experiment


def run_seed(seed: int, rounds: int, out: Path, overrides: Sequence[str], skip_flower: bool) -> SeedRun:
    """Run the Flower simulation, the in-process runner and both baselines for one seed under ``out/seed<seed>``."""
    run = SeedRun(seed)
    seed_dir = out / f"seed{seed}"
    backends = ("inprocess",) if skip_flower else ("flwr_run", "inprocess")
    for backend in backends:
        name = "flower" if backend == "flwr_run" else "inprocess"
        experiment = compose_config(seed, rounds, backend, overrides)
        print(f"\n=== seed {seed}: {name} ===", flush=True)
        start = time.perf_counter()
        run_experiment(experiment, seed_dir / name)
        run.total_seconds[name] = time.perf_counter() - start
        # Both runtimes' rows as written to disk, so they are compared after the same JSON round trip.
        setattr(run, name, read_metrics(seed_dir / name))

    torch.set_num_threads(1)  # as the in-process runner and every Flower app
    for name, baseline in (("local_only", run_local_only), ("server_only", run_transfer_only_server)):
        print(f"\n=== seed {seed}: baseline {name} ===", flush=True)
        start = time.perf_counter()
        _run_baseline(baseline, experiment, seed_dir / name)
        run.total_seconds[name] = time.perf_counter() - start
        setattr(run, name, read_metrics(seed_dir / name))

    federation = build_federation(experiment)
    run.tiers = federation.tier_names()
    run.tier_models = {tier.name: tier.model for tier in experiment.device_profile.tiers}
    run.weight_nbytes = model_weight_nbytes(experiment, federation)
    run.num_selected = [
        len(sample_clients(experiment.num_clients, experiment.strategy.fraction_fit, experiment.seed, r))
        for r in range(1, rounds + 1)
    ]
    return run


def _run_baseline(baseline: Callable[..., Any], experiment: ExperimentConfig, out_dir: Path) -> None:
    """Run a baseline into a run folder of its own: ``metrics.jsonl`` as it goes, ``metrics.csv`` at the end."""
    recorder = RoundRecorder(out_dir)

    def on_round(row: Row) -> None:
        recorder.record(row)
        print(format_round_line(row), flush=True)

    baseline(experiment, on_round=on_round)
    write_csv(recorder.rows, out_dir / "metrics.csv")
