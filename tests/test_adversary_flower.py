"""Malicious clients through `flwr run`: the ClientApp builds the same liar as the in-process runner, and the attack's
figures are the same in both runtimes (one tiny case: it pays Flower's start-up)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from fl_kd.simulations.config import experiment_config
from fl_kd.simulations.flower_launcher import superlink_processes
from fl_kd.simulations.run import run_experiment

TINY = (
    "num_clients=3",
    "transfer.labelled=60",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "strategy=dsfl",
    "strategy.rounds=2",
    "strategy.server_epochs=1",
    "strategy.aggregation=trust",
    "partition.min_size=20",
    "seed=3",
    "adversary=targeted",
    "adversary.fraction=0.34",
)


def _rows(tmp_path: Path, *overrides: str) -> list[dict]:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        cfg = experiment_config(compose(config_name="config", overrides=[*TINY, *overrides]))
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in run_experiment(cfg, tmp_path)]


@pytest.mark.slow
def test_a_targeted_attack_gives_the_same_metrics_in_both_runtimes(tmp_path: Path) -> None:
    flower = _rows(tmp_path / "flower")
    inprocess = _rows(tmp_path / "inprocess", "simulation.backend=inprocess")
    assert len(flower) == 2 and flower == inprocess
    assert all(row["n_malicious_accepted"] == 1 and "attack_success_rate" in row for row in flower)
    assert 0.0 < flower[-1]["malicious_weight_share"] < 1.0
    assert superlink_processes(tmp_path / "flower" / ".flwr") == []


@pytest.mark.slow
def test_an_absent_clients_empty_reply_is_refused_alike_in_both_runtimes(tmp_path: Path) -> None:
    """An empty reply (``adversary=absent``) crosses Flower's messages and meets the ServerApp's protocol check."""
    flower = _rows(tmp_path / "flower", "adversary=absent")
    assert flower == _rows(tmp_path / "inprocess", "adversary=absent", "simulation.backend=inprocess")
    assert [(row["n_rejected"], row["n_malicious_accepted"]) for row in flower] == [(1, 0), (1, 0)]
    log = (tmp_path / "flower" / "server.log").read_text()
    assert "dropped 1 answer(s): client 2: arrays [] are not" in log


COLLUDING = (
    "num_clients=3",
    "transfer.labelled=60",
    "device_profile=homogeneous",
    "partition.min_size=20",
    "seed=3",
    "strategy=fedavg",
    "strategy.rounds=2",
    "strategy.aggregation=fltrust",
    "adversary=fltrust_adaptive",
    "adversary.fraction=0.34",
)


@pytest.mark.slow
@pytest.mark.parametrize("root", [(), ("transfer.server_private=40",)], ids=["public_root", "private_root"])
def test_colluders_against_fltrust_give_the_same_metrics_in_both_runtimes(
    tmp_path: Path, root: tuple[str, ...]
) -> None:
    """The colluders' side channel and FLTrust's root update both live beside the server half the ServerApp builds,
    and so do the colluders' estimates of a private root's update."""
    runs = []
    for backend in ("flwr_run", "inprocess"):
        with initialize_config_module(config_module="fl_kd.conf", version_base=None):
            cfg = experiment_config(
                compose(config_name="config", overrides=[*COLLUDING, *root, f"simulation.backend={backend}"])
            )
        rows = run_experiment(cfg, tmp_path / backend)
        runs.append([{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows])
    flower, inprocess = runs
    assert len(flower) == 2 and flower == inprocess
    assert all(row["n_malicious_accepted"] == 1 for row in flower)
    assert 0.0 < flower[-1]["malicious_weight_share"] < 1.0  # the crafted update keeps FLTrust's trust
