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

from fl_kd.config import to_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.models import format_model_report, model_report
from fl_kd.partition import PartitionReport
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.config import experiment_config

log = logging.getLogger(__name__)

MODEL_REPORT = "model_report.txt"
REPORT_SUMMARY = "federation.json"
"""The report's own summary (not ``summary.json``, which names a finished ``fl-kd-sim`` run to ``fl-kd-table``)."""


def write_reports(experiment: ExperimentConfig, out_dir: Path) -> dict[str, object]:
    """Build the federation exactly as a run would; print both reports and save them in ``out_dir``."""
    federation = build_federation(experiment)
    data = federation.data
    labels = data.y_train.numpy()
    report = PartitionReport.from_partition(labels, federation.client_idx, data.num_classes)
    rows = model_report(experiment.device_profile, data.input_shape, data.num_classes)

    out_dir.mkdir(parents=True, exist_ok=True)
    report.save(out_dir / "partition_report.json")
    (out_dir / MODEL_REPORT).write_text(format_model_report(rows) + "\n")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_mapping(experiment)))
    private = sum(int(idx.size) for idx in federation.client_idx)
    print(
        f"dataset {data.name}: {len(labels)} training samples, transfer set {federation.transfer_idx.size}, "
        f"{private} private samples over {federation.num_clients} clients"
    )
    print(report.to_text())
    print("device tiers: " + ", ".join(f"client {i}={name}" for i, name in federation.tier_names().items()))
    print(format_model_report(rows))
    summary = {"label_skew": report.label_skew, "client_tiers": [tier.name for tier in federation.tiers]}
    (out_dir / REPORT_SUMMARY).write_text(json.dumps(summary, indent=2))
    print(f"reports saved in {out_dir}")
    return summary


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="config")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, report."""
    write_reports(experiment_config(cfg), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
