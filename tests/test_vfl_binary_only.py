"""A two-class defence or attack on a task of more classes is refused before any training, in every runtime.

Until 2026-12-05 ``fl-kd-vfl dataset=digits attack=[norm_scoring]`` trained in full and only then said, in the
results table, that the attack needs binary labels; ``defence=marvell`` on digits ended in a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Message

from fl_kd.clients.vfl_app import app as client_app
from fl_kd.config import ConfigError, from_mapping
from fl_kd.strategies.vfl import VFLServer
from fl_kd.vfl import build_experiment
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.protocol import CONFIG_KEY, SAMPLE_IDS, encode_config
from tests.flower_loopback import LoopbackGrid


def _config(dataset: str, attacks: tuple[str, ...] = (), defence: str = "none") -> VFLRunConfig:
    return from_mapping(
        VFLRunConfig,
        {
            "dataset": {"name": dataset},
            "defence": {"name": defence},
            "attack": {name: {} for name in attacks},
            "training": {"epochs": 1, "batch_size": 64, "max_train_samples": 128, "max_test_samples": 64},
        },
    )


def test_the_config_names_what_needs_two_classes() -> None:
    config = _config("digits", ("direct_label_inference", "norm_scoring", "direction_scoring"), "marvell")
    assert config.binary_only() == ["defence marvell", "attack norm_scoring", "attack direction_scoring"]
    config.check_num_classes(2)
    with pytest.raises(ConfigError) as refused:
        config.check_num_classes(10)
    assert str(refused.value) == (
        "dataset=digits has 10 classes, but defence marvell and attack norm_scoring and attack direction_scoring "
        "works on two-class tasks only"
    )
    _config("digits", ("direct_label_inference",)).check_num_classes(10)  # nothing binary-only: any class count


@pytest.mark.parametrize(("attacks", "defence"), [(("norm_scoring",), "none"), ((), "marvell")])
def test_the_in_process_loop_refuses_before_building_a_party(attacks: tuple[str, ...], defence: str) -> None:
    with pytest.raises(ConfigError, match="dataset=digits has 10 classes"):
        build_experiment(_config("digits", attacks, defence))
    assert len(build_experiment(_config("breast_cancer", attacks, defence)).feature_parties) == 1


def test_the_server_app_refuses_at_discovery_before_any_party_is_set_up() -> None:
    config = _config("digits", ("norm_scoring",))
    seen: list[str] = []

    def log(message: Message, reply: Message) -> list[Message]:
        seen.append(message.metadata.message_type)
        return [reply]

    grid = LoopbackGrid(client_app, config.num_feature_parties + 1, {CONFIG_KEY: encode_config(config)}, log)
    with pytest.raises(ConfigError, match="attack norm_scoring works on two-class tasks only"):
        VFLServer(config).run(grid)
    assert seen and set(seen) == {SAMPLE_IDS}, seen  # CoAE's autoencoder, trained at setup, would take minutes


@pytest.mark.parametrize("backend", ["inprocess", "flwr_run"])
def test_fl_kd_vfl_gives_one_line_and_exit_2_before_training(tmp_path: Path, backend: str) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fl_kd.simulations.vfl",
        "dataset=digits",
        "attack=[norm_scoring]",
        f"simulation.backend={backend}",
        f"hydra.run.dir={run}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: dataset=digits has 10 classes, but attack norm_scoring works on two-class tasks only"
    ], result.stderr
    progress = run / "epochs.jsonl"
    assert not progress.exists() or progress.read_text() == ""  # no epoch ran
