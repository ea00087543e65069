"""`fl-kd-sim`: compose the Hydra config and run selective distillation as a Flower simulation.

``simulation.backend=flwr_run`` (default) runs the Flower apps through ``flwr run`` on a local simulated
federation; ``simulation.backend=inprocess`` runs the same algorithm with the reference runner, without Flower.
Either way the Hydra run folder gets the resolved config, ``metrics.jsonl``/``metrics.csv`` (one row per round),
``summary.json`` and the plots ``accuracy.png`` and ``bytes.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.kd.config import ReferenceConfig
from fl_kd.kd.runner import run_reference, summarise
from fl_kd.results import RoundRecorder, format_round_line, print_summary_table, read_metrics, write_outputs
from fl_kd.simulations.config import partition_params, validate_config
from fl_kd.simulations.flower_launcher import run_flower_simulation

log = logging.getLogger(__name__)

SERVERAPP = "fl_kd.strategies.fedgems_app:app"
CLIENTAPP = "fl_kd.clients.fedgems_app:app"


def reference_config(cfg: DictConfig) -> ReferenceConfig:
    """The core's experiment config from a validated Hydra config (one key at a time, nothing implicit)."""
    strategy = cfg.strategy
    profile = OmegaConf.to_container(cfg.device_profile, resolve=True)
    assert isinstance(profile, dict)
    return ReferenceConfig(
        device_profile=profile,  # type: ignore[arg-type]
        dataset=cfg.dataset.name,
        dataset_root=cfg.dataset.root,
        num_clients=cfg.num_clients,
        partition=cfg.partition.name,
        partition_params=partition_params(cfg),
        min_partition_size=cfg.partition.min_size,
        transfer_size=cfg.transfer_size,
        rounds=strategy.rounds,
        fraction_fit=strategy.fraction_fit,
        epsilon=strategy.epsilon,
        temperature=strategy.temperature,
        weighting=strategy.weighting,
        server_epochs=strategy.server_epochs,
        server_batch_size=strategy.server_batch_size,
        server_lr=strategy.server_lr,
        client_distill_epochs=strategy.client_distill_epochs,
        logits_dtype=strategy.logits_dtype,
        checkpoint=strategy.checkpoint,
        seed=cfg.seed,
    )


def run_experiment(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run one validated experiment into ``out_dir``; returns its per-round metrics."""
    experiment = reference_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if cfg.simulation.backend == "inprocess":
        # One thread, like each ClientApp and the ServerApp, so both runtimes reduce floats in the same order.
        torch.set_num_threads(1)
        recorder = RoundRecorder(out_dir)

        def on_round(row: dict[str, Any]) -> None:
            recorder.record(row)
            print(format_round_line(row), flush=True)

        result = run_reference(experiment, on_round=on_round, checkpoint_out=out_dir / "server.pt")
        write_outputs(out_dir, result.rounds, result.summary)
        return list(result.rounds)

    code = run_flower_simulation(
        out_dir,
        SERVERAPP,
        CLIENTAPP,
        run_config={"fl-kd-config": experiment.to_json(), "output-dir": str(out_dir.resolve())},
        num_supernodes=experiment.num_clients,
        num_cpus_per_client=cfg.simulation.num_cpus_per_client,
        num_cpus=cfg.simulation.num_cpus,
    )
    rows = read_metrics(out_dir) if (out_dir / "metrics.jsonl").exists() else []
    if code != 0 or len(rows) != experiment.rounds:
        raise RuntimeError(
            f"the Flower simulation ended with exit code {code} after {len(rows)} of {experiment.rounds} rounds; "
            f"see {out_dir / '.flwr' / 'local-superlink' / 'superlink.log'}"
        )
    return rows


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, summarise."""
    validated = validate_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = run_experiment(validated, out_dir)
    print_summary_table(rows, title=f"fl-kd {validated.strategy.name} on {validated.dataset.name}")
    summary = summarise(rows, wall_seconds=sum(float(row["wall_seconds"]) for row in rows))
    print(f"server accuracy {summary.get('final_server_acc', float('nan')):.4f}; run folder: {out_dir}")


if __name__ == "__main__":
    main()
