"""A user's mistake ends ``fl-kd-sim`` (and ``fl-kd-vfl``) with one line naming the key or file and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_kd.models import build_model
from fl_kd.secret import SERVER_KEY_ENV


def _fl_kd_sim(tmp_path: Path, *overrides: str, full_error: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    command = [sys.executable, "-m", "fl_kd.simulations.run", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("transfer.labelled=-3", "error: transfer.labelled must be in [0, inf], got -3"),
        ("strategy.server_lr=nan", "error: strategy.server_lr must be a finite number, got nan"),
        ("strategy.weighting=median", "error: strategy.weighting='median' is not one of inverse_entropy"),
        # Seeds are 32-bit words of NumPy's SeedSequence: 2**32 ran as seed 0 while its config named another.
        ("seed=4294967296", "error: seed must be in [0, 4294967295], got 4294967296"),
        # Renaming the option's behaviour kept the option's settings (none: no attacker), unlike adversary=label_flip.
        ("adversary.name=label_flip", "error: adversary.name=label_flip beside adversary=none: choose the behaviour"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(tmp_path: Path, override: str, expected: str) -> None:
    result = _fl_kd_sim(tmp_path, override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["transfer.labelled=5000"], "error: transfer.labelled=5000 on digits: transfer set size must be in [0, 1437]"),
        # A size far beyond the test split only repeats its examples; 10**11 of them ran out of memory.
        (
            ["personalised_test_size=100000000000", "simulation.backend=inprocess"],
            "error: personalised_test_size=100000000000 on digits: size 100000000000 is more than 10x the test split's",
        ),
        (
            ["num_clients=2000", "simulation.backend=inprocess"],
            "error: num_clients=2000 with partition=dirichlet on digits: cannot split",
        ),
        (["device=cuda:99" if torch.cuda.is_available() else "device=cuda"], "error: device=cuda"),
        (["device=gpu"], "error: device must be a torch device such as cpu or cuda:0, got 'gpu'"),
        # A server model that diverges stops the run with what to change (it crashed in the knowledge cache).
        (
            ["strategy.server_lr=100", "strategy.rounds=1", "simulation.backend=inprocess"],
            "error: the server model diverged: its training loss is ",
        ),
        *(
            [(["device=mps"], "error: device=mps, but this torch has no usable")]
            if not torch.backends.mps.is_available()
            else []
        ),
        (
            ["dataset=breast_cancer", "simulation.backend=inprocess"],
            "error: device_profile.server_model=resnet_server on breast_cancer (pick a device_profile made for its",
        ),
        (
            ["adversary=targeted", "adversary.target=10"],
            "error: adversary.target=10 is no class of a 10-class dataset (0 to 9)",
        ),
        (
            ["adversary=label_flip", "adversary.fraction=0.1", "num_clients=4", "simulation.backend=inprocess"],
            "error: adversary.fraction=0.1 of num_clients=4 is no client",
        ),
        (
            [
                "dataset=breast_cancer",
                "num_clients=4",
                "device_profile=three_tier_mlp",
                "strategy.server_augment_shift=2",
            ],
            "error: strategy.server_augment_shift and strategy.server_augment_mirror need image inputs",
        ),
    ],
)
def test_settings_this_dataset_or_machine_cannot_meet_give_one_line_and_exit_2(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    """Checked only once the dataset is loaded or the machine is known: they ended in a traceback."""
    result = _fl_kd_sim(tmp_path, *overrides)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_a_checkpoint_of_another_architecture_is_named(tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.pt"
    torch.save(build_model("cnn_small", (1, 8, 8), 10, seed=0).state_dict(), checkpoint)
    result = _fl_kd_sim(tmp_path, f"strategy.checkpoint={checkpoint}")
    assert result.returncode == 2
    # The check overlaps Flower's start-up, so a Flower start-up log line may come first (on a loaded machine).
    lines = [line for line in result.stderr.strip().splitlines() if "INFO" not in line]
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "another architecture" in lines[0], result.stderr


def test_hydra_full_error_still_shows_the_traceback(tmp_path: Path) -> None:
    result = _fl_kd_sim(tmp_path, "transfer.labelled=-3", full_error=True)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.lr=nan"], "error: training.lr must be a finite number, got nan"),
        # Known only once the dataset is loaded: checked while Flower starts, not in its ServerApp's log.
        (
            ["defence=randomised_label", "vfl_model=mlp_top"],
            "error: defence=randomised_label needs each feature party's embedding to be its logits: "
            "vfl_model.top=sum, got vfl_model.top=mlp",
        ),
        (
            ["attack.passive_model_completion.num_known=100000"],
            "error: attack.passive_model_completion.num_known=100000 leaves none of the 455 training samples to attack",
        ),
        (
            ["attack.passive_model_completion.num_classes=5", "simulation.backend=inprocess"],
            "error: attack.passive_model_completion.num_classes=5, but dataset=breast_cancer has 2 classes",
        ),
        (
            ["vfl_split=blocks3", "vfl_split.num_parties=50"],
            "error: vfl_split.num_parties=50: cannot split 30 features across that many parties",
        ),
        (
            ["vfl_split.scheme=[[0,1],[1,2]]", "simulation.backend=inprocess"],
            "error: vfl_split.scheme: explicit feature index lists must be disjoint",
        ),
        (["vfl_split.scheme=[[0,1],[2,100]]"], "error: vfl_split.scheme: party 1 has feature indices outside [0, 30)"),
    ],
)
def test_vertical_fl_gives_one_line_and_exit_2_too(tmp_path: Path, overrides: list[str], expected: str) -> None:
    command = [sys.executable, "-m", "fl_kd.simulations.vfl", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["strategy.held_out_fraction=0.5"],
            "error: strategy.held_out_fraction=0.5 is used only with strategy.correctness=held_out",
        ),
        (["strategy.canary_z=5"], "error: strategy.canary_z=5.0 is used only with strategy.canaries > 0"),
        (["strategy.canary_burst_z=3"], "error: strategy.canary_burst_z=3.0 is used only with strategy.canaries > 0"),
        (
            ["strategy.consensus_burst_z=3"],
            "error: strategy.consensus_burst_z is a setting of the consensus screen: set strategy.consensus_z too",
        ),
        (
            ["strategy.learned_trim=2"],
            "error: strategy.learned_trim=2 is used only with strategy.unlabelled_trust=learned",
        ),
        (
            ["strategy.teacher_min_confidence=0.5"],
            "error: strategy.teacher_min_confidence=0.5 is used only with strategy.unlabelled_trust=class_reliability",
        ),
    ],
)
def test_a_setting_whose_feature_is_off_is_refused_not_dropped(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    """Each gave exactly the default run's figures: an ablation of it that was the baseline."""
    result = _fl_kd_sim(tmp_path, "simulation.backend=inprocess", *overrides)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(expected)


def test_a_run_refused_in_a_folder_of_an_earlier_run_leaves_no_summary_there(tmp_path: Path) -> None:
    """Hydra had already rewritten .hydra/overrides.yaml for the refused run: the earlier run's summary.json, left
    beside it, was tabled by fl-kd-table under the refused run's settings."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"final_server_acc": 0.6}')
    result = _fl_kd_sim(tmp_path, "partition.alpha=-1")
    assert result.returncode == 2 and not (tmp_path / "run" / "summary.json").exists()


def test_help_names_the_command_not_hydras_module(tmp_path: Path) -> None:
    """Hydra's own header read "run is powered by Hydra." (the module's name)."""
    command = [sys.executable, "-m", "fl_kd.simulations.run", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("fl-kd-sim (and fl-kd-report): "), result.stdout[:200]
    assert "is powered by Hydra" not in result.stdout.splitlines()[0]


def test_canaries_without_the_servers_key_are_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SERVER_KEY_ENV)
    result = _fl_kd_sim(
        tmp_path, "simulation.backend=inprocess", "strategy=fedgems_plus", "transfer.unlabelled=400",
        "strategy.canaries=100", "strategy.unlabelled_per_round=0",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert result.stderr.startswith(f"error: strategy.canaries needs the server's key: set {SERVER_KEY_ENV}")
