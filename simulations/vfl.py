"""`fl-kd-vfl`: compose the Hydra config ``vfl.yaml`` and run one vertical-FL experiment.

``simulation.backend=flwr_run`` (default) runs the VFL ServerApp and ClientApp through ``flwr run`` on a local
simulated federation (one SuperNode per feature party plus one for the label party); ``simulation.backend=inprocess``
runs the same parties with the in-process loop of :mod:`fl_kd.vfl`, without Flower. Both give the same numbers for
the same seed. The run folder gets the resolved ``config.yaml``, ``epochs.jsonl`` (one row per epoch),
``results.json`` (MP, AUC for binary tasks, each attack's AP and VFLAIR's defence capability score per attack)
and ``vfl.log``; the console shows one line per epoch and a final table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import to_mapping
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.console import Report, follow_progress, quiet_console
from fl_kd.simulations.flower_launcher import run_flower_simulation, touched_since
from fl_kd.simulations.jobs import run_command, sweep_job
from fl_kd.simulations.vfl_console import epoch_line, print_vfl_summary
from fl_kd.simulations.vfl_schema import load_config, register_vfl_schema
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.experiment import add_defence_scores, run_vfl
from fl_kd.vfl.node_roles import NODE_ROLES_KEY
from fl_kd.vfl.results import progress_writer, write_results

SERVERAPP = "fl_kd.strategies.vfl_app:app"
CLIENTAPP = "fl_kd.clients.vfl_app:app"
LOG_FILE = "vfl.log"

register_vfl_schema()  # before @hydra.main composes: the files of conf/ extend these nodes


def run_inprocess(config: VFLRunConfig, out_dir: Path, report: Report | None = None) -> dict[str, Any]:
    """The run with the in-process loop (:func:`fl_kd.vfl.run_vfl`), writing ``epochs.jsonl`` as Flower's does."""
    # One thread, like every ClientApp, so both runtimes reduce floats in the same order.
    torch.set_num_threads(1)
    write_row = progress_writer(out_dir / vp.PROGRESS_FILE)

    def on_epoch(row: dict[str, Any]) -> None:
        write_row(row)
        if report is not None:
            report(row)

    return run_vfl(config, report=on_epoch)


def preflight(config: VFLRunConfig) -> None:
    """Load the dataset and check its class count and the split of its features while Flower starts (stopping it
    when they fail).

    The ClientApps load the data only once the federation runs; a missing or corrupt dataset, a two-class defence
    or attack on a dataset of more classes, or more parties than features would then end the run with the reason
    buried in the log.
    """
    from fl_kd.data import load_dataset
    from fl_kd.vfl.split import make_split

    data = load_dataset(config.dataset.name, root=config.dataset.root)
    config.check_num_classes(int(data.num_classes))
    limit = config.training.max_train_samples
    config.check_num_train(len(data.y_train) if limit is None else min(limit, len(data.y_train)))
    make_split(data.input_shape, config.vfl_split.scheme, config.vfl_split.num_parties)


def run_flower(config: VFLRunConfig, out_dir: Path, report: Report | None = None) -> dict[str, Any]:
    """The run as a Flower simulation through ``flwr run``; the ServerApp writes the results into ``out_dir``."""
    results_path = out_dir / vp.RESULTS_FILE
    results_path.unlink(missing_ok=True)
    launched = time.time()
    with follow_progress(out_dir / vp.PROGRESS_FILE, report):
        code = run_flower_simulation(
            out_dir,
            SERVERAPP,
            CLIENTAPP,
            run_config={
                vp.CONFIG_KEY: vp.encode_config(config),
                vp.OUTPUT_KEY: str(out_dir.resolve()),
                NODE_ROLES_KEY: "",  # declared, so a deployment of the same app can pin the roles at `flwr run`
            },
            num_supernodes=config.num_feature_parties + 1,
            num_cpus_per_client=config.simulation.num_cpus_per_client,
            num_cpus=config.simulation.num_cpus,
            preflight=lambda: preflight(config),
            started=lambda: touched_since(out_dir / vp.PROGRESS_FILE, launched),
        )
    if code != 0 or not results_path.exists():
        raise RuntimeError(
            f"the Flower simulation ended with exit code {code} without writing {results_path}; "
            f"see {out_dir / LOG_FILE} and {out_dir / '.flwr' / 'local-superlink' / 'superlink.log'}"
        )
    return dict(json.loads(results_path.read_text()))


def run_experiment(config: VFLRunConfig, out_dir: Path, report: Report | None = None) -> dict[str, Any]:
    """Run one experiment into ``out_dir`` with its backend; returns (and writes) its scored results.

    ``report`` receives each epoch's row as training goes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_mapping(config)))
    if config.simulation.backend == "inprocess":
        results = run_inprocess(config, out_dir, report)
    else:
        results = run_flower(config, out_dir, report)
    results["backend"] = config.simulation.backend
    add_defence_scores(results, config)
    write_results(out_dir / vp.RESULTS_FILE, results)
    return results


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="vfl")
@user_errors_exit
@sweep_job
def run_job(cfg: DictConfig) -> None:
    """Hydra task: compose, check, run (one console line per epoch), summarise (one job of a multirun: see
    :mod:`fl_kd.simulations.jobs`)."""
    config = load_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with quiet_console(out_dir / LOG_FILE) as console:

        def report(row: dict[str, Any]) -> None:
            console.write(epoch_line(row, config.training.epochs) + "\n")

        results = run_experiment(config, out_dir, report)
    title = f"fl-kd-vfl: {config.dataset.name}, defence {config.defence.name}, backend {config.simulation.backend}"
    print_vfl_summary(results, title)
    print(f"run folder: {out_dir} (log: {LOG_FILE})")


def main() -> None:
    """``fl-kd-vfl``: one run, or with ``--multirun`` every job of a sweep even if some fail (then exit code 1)."""
    run_command(run_job)


if __name__ == "__main__":
    main()
