"""The renovation changed no number: ``fl-kd-sim`` reproduces, bit for bit, a run recorded on main before it.

``tests/data/recorded/fl_kd_sim_default.json`` holds every per-round metric (wall time aside) of
``fl-kd-sim simulation.backend=inprocess`` with the default config, recorded before the config, registry and
protocol rework; the Flower backend gave the same rows (``tests/test_simulation.py`` checks Flower against
in-process on every run).
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_module

from fl_kd.simulations.config import experiment_config
from fl_kd.simulations.run import run_experiment

RECORDED = Path(__file__).resolve().parent / "data" / "recorded"


def test_default_fl_kd_sim_reproduces_the_recorded_run(tmp_path: Path) -> None:
    recorded = json.loads((RECORDED / "fl_kd_sim_default.json").read_text())["rounds"]
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["simulation.backend=inprocess"])
    rows = run_experiment(experiment_config(cfg), tmp_path)
    # Every recorded metric is the same; metrics added since (device cost) come on top.
    assert len(rows) == len(recorded)
    assert [{key: row[key] for key in before} for row, before in zip(rows, recorded, strict=True)] == recorded
