"""`fl-kd-sim`: compose the Hydra config and run selective distillation as a Flower simulation.

``simulation.backend=flwr_run`` (default) runs the Flower apps through ``flwr run`` on a local simulated
federation; ``simulation.backend=inprocess`` runs the same algorithm with the reference runner, without Flower.
Either way the Hydra run folder gets the resolved config, ``metrics.jsonl``/``metrics.csv`` (one row per round),
``summary.json`` and the plots ``accuracy.png`` and ``bytes.png``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import to_mapping
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.progress import folder_run_id
from fl_kd.kd.protocol import CHECKPOINT_FILE, OUTPUT_DIR_KEY, RUN_CONFIG_KEY, RUN_ID_KEY
from fl_kd.kd.runner import run_inprocess, summarise
from fl_kd.plots import run_title
from fl_kd.results import (
    METRICS_JSONL,
    SERVER_LOG,
    RoundRecorder,
    finished_rounds,
    format_round_line,
    print_summary_table,
    read_metrics,
    server_error,
    write_outputs,
)
from fl_kd.runtime import check_device_available
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.config import experiment_config
from fl_kd.simulations.console import follow_progress, quiet_console
from fl_kd.simulations.flower_launcher import run_flower_simulation, touched_since
from fl_kd.simulations.jobs import in_multirun, run_command, sweep_job
from fl_kd.simulations.processes import hold_folder, interrupt_exit_code, termination_as_interrupt

log = logging.getLogger(__name__)

#: What `flwr run` and the processes it starts write, in the run folder (the console shows one line per round).
FLOWER_LOG = "flower.log"


def run_experiment(experiment: ExperimentConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run one experiment into ``out_dir`` with its strategy and backend; returns its per-round metrics.

    Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops every process it started, says in one line where the finished
    rounds are, and ends a single ``fl-kd-sim`` run with exit code 128 + the signal's number; elsewhere (a sweep, a
    caller of its own) the ``KeyboardInterrupt`` goes on.
    """
    check_device_available(experiment.device)  # both backends run their models on this machine
    try:
        with termination_as_interrupt(), hold_folder(out_dir):
            return _run(experiment, out_dir)
    except KeyboardInterrupt as interrupt:
        print(interrupted_line(out_dir, interrupt), file=sys.stderr, flush=True)
        if HydraConfig.initialized() and not in_multirun():
            raise SystemExit(interrupt_exit_code(interrupt)) from None
        raise


def interrupted_line(out_dir: Path, interrupt: KeyboardInterrupt) -> str:
    """The one line an interrupted run prints: why, how many rounds finished, and where they are."""
    path = out_dir / METRICS_JSONL
    try:
        rounds = len(read_metrics(out_dir)) if path.exists() else 0
    except ValueError:  # a line cut short by the interrupt
        rounds = 0
    return (
        f"interrupted ({str(interrupt) or 'Ctrl-C'}); every process of the run was stopped; partial results "
        f"({rounds} finished round{'s' if rounds != 1 else ''}) in {path}"
    )


def _run(experiment: ExperimentConfig, out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_mapping(experiment)))
    algorithm = get_algorithm(experiment.strategy.name)
    if experiment.simulation.backend == "inprocess":
        # One thread, like each ClientApp and the ServerApp, so both runtimes reduce floats in the same order.
        torch.set_num_threads(1)
        recorder = RoundRecorder(out_dir)

        def on_round(row: dict[str, Any]) -> None:
            recorder.record(row)
            print(format_round_line(row), flush=True)

        result = run_inprocess(experiment, on_round=on_round, checkpoint_out=out_dir / CHECKPOINT_FILE)
        write_outputs(out_dir, result.rounds, result.summary, title=run_title(to_mapping(experiment)))
        return list(result.rounds)

    # Flower's own output (banner, log stream, Ray) goes to the run folder; the console gets the ServerApp's rows.
    with quiet_console(out_dir / FLOWER_LOG) as console:

        def report(row: dict[str, Any]) -> None:
            console.write(format_round_line(row) + "\n")

        launched = time.time()
        with follow_progress(out_dir / METRICS_JSONL, report):
            code = run_flower_simulation(
                out_dir,
                algorithm.server_app,
                algorithm.client_app,
                run_config={
                    RUN_CONFIG_KEY: experiment.to_json(),
                    OUTPUT_DIR_KEY: str(out_dir.resolve()),
                    RUN_ID_KEY: folder_run_id(out_dir),
                },
                num_supernodes=experiment.num_clients,
                num_cpus_per_client=experiment.simulation.num_cpus_per_client,
                num_cpus=experiment.simulation.num_cpus,
                # Build what the ServerApp will build, here, while Flower starts: a missing dataset or a bad
                # checkpoint is one clear error, and the check overlaps Flower's start-up instead of delaying it.
                preflight=lambda: algorithm.build_server(experiment, build_federation(experiment)),
                started=lambda: touched_since(out_dir / SERVER_LOG, launched),
            )
    rows = finished_rounds(out_dir, code, experiment.strategy.rounds)
    if rows is None:
        raised = server_error(out_dir)  # raises a user's mistake as its one line
        why = "" if raised is None else f" (the ServerApp raised {raised.get('error_type')}: {raised.get('message')})"
        raise RuntimeError(
            f"the Flower simulation ended with exit code {code} before writing its {experiment.strategy.rounds} rounds "
            f"and its summary{why}; "
            f"see {out_dir / FLOWER_LOG}, {out_dir / SERVER_LOG} and "
            f"{out_dir / '.flwr' / 'local-superlink' / 'superlink.log'}"
        )
    return rows


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="config")
@user_errors_exit
@sweep_job
def run_job(cfg: DictConfig) -> None:
    """Hydra task: compose, validate, run, summarise (one job of a multirun: see :mod:`fl_kd.simulations.jobs`)."""
    experiment = experiment_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = run_experiment(experiment, out_dir)
    print_summary_table(rows, title=f"fl-kd {experiment.strategy.name} on {experiment.dataset.name}")
    summary = summarise(rows, wall_seconds=sum(float(row["wall_seconds"]) for row in rows))
    print(f"server accuracy {summary.get('final_server_acc', float('nan')):.4f}; run folder: {out_dir}")


def main() -> None:
    """``fl-kd-sim``: one run, or with ``--multirun`` every job of a sweep even if some fail (then exit code 1)."""
    run_command(run_job)


if __name__ == "__main__":
    main()
