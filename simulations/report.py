"""`fl-kd-report`: print and save the partition report and the model report of a composed config.

It answers "what would this federation look like?" before any training: how skewed each client's labels are,
which device tier each client gets, and how large each model is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.data import load_dataset, split_transfer_set
from fl_kd.models import assign_tiers, format_model_report, model_report
from fl_kd.partition import PartitionReport, partition
from fl_kd.simulations.config import device_profile, partition_params, validate_config

log = logging.getLogger(__name__)


def write_reports(cfg: DictConfig, out_dir: Path) -> dict[str, object]:
    """Build the federation's data split and models; print both reports and save them in ``out_dir``."""
    data = load_dataset(cfg.dataset.name, root=cfg.dataset.root, download=cfg.dataset.download)
    labels = data.y_train.numpy()
    transfer_idx, private_idx = split_transfer_set(labels, cfg.transfer_size, seed=cfg.seed)
    parts = partition(
        labels[private_idx],
        cfg.partition.name,
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        min_size=cfg.partition.min_size,
        **partition_params(cfg),
    )
    report = PartitionReport.from_partition(labels[private_idx], parts, data.num_classes)
    profile = device_profile(cfg)
    tiers = assign_tiers(profile, cfg.num_clients, seed=cfg.seed)
    rows = model_report(profile, data.input_shape, data.num_classes)

    out_dir.mkdir(parents=True, exist_ok=True)
    report.save(out_dir / "partition_report.json")
    (out_dir / "model_report.txt").write_text(format_model_report(rows) + "\n")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(
        f"dataset {data.name}: {len(labels)} training samples, transfer set {len(transfer_idx)}, "
        f"{len(private_idx)} private samples over {cfg.num_clients} clients"
    )
    print(report.to_text())
    print("device tiers: " + ", ".join(f"client {i}={tier.name}" for i, tier in enumerate(tiers)))
    print(format_model_report(rows))
    summary = {"label_skew": report.label_skew, "client_tiers": [tier.name for tier in tiers]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, report."""
    validated = validate_config(cfg)
    write_reports(validated, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
