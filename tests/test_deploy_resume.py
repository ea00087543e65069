"""``fl-kd-deploy deploy.resume=<run folder>``: a dead deployment is started again in its folder and resumes.

The processes are faked here (the real ones: ``tests/test_deployment_faults.py``); what is checked is what the
launcher hands them: the run folder's own experiment, ``resume=true`` in the app's run config, and the node data and
client states of the first attempt left in place.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from fl_kd.config import ConfigError
from fl_kd.kd.progress import CLIENT_STATE_DIR, PROGRESS_DIR, PROGRESS_FILE, folder_run_id
from fl_kd.results import METRICS_JSONL
from fl_kd.simulations import deploy
from fl_kd.simulations.deploy_settings import split_deploy_settings
from fl_kd.simulations.loopback import Endpoints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENT = ("num_clients=3", "strategy.rounds=2", "transfer.labelled=60", "seed=5")


def _compose(*overrides: str) -> Any:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="deploy", overrides=list(overrides))


def _saved_run(run_dir: Path) -> Any:
    """A run folder as a deployment killed after round 1 leaves it (its progress names its experiment)."""
    experiment, _ = split_deploy_settings(_compose(*EXPERIMENT))
    (run_dir / PROGRESS_DIR).mkdir(parents=True)
    (run_dir / PROGRESS_DIR / PROGRESS_FILE).write_text(json.dumps({"round": 1, "experiment": experiment.to_json()}))
    return experiment


class _FakeDeployment:
    """Starts nothing; its run "finishes" every round, as the resumed ServerApp would write them."""

    def __init__(self, deploy_dir: Path, cli_home: Path, num_partitions: int, settings: Any, node_configs: Any) -> None:
        self.deploy_dir, self.node_configs, self.tls, self.auth, self.superlink = (
            deploy_dir,
            node_configs,
            None,
            False,
            "x",
        )
        self.run_log = self.superlink_log = deploy_dir / "none.log"
        self.registered: dict[int, int] = {}

    def start(self) -> Endpoints:
        return Endpoints(self.superlink, (), None, self.deploy_dir)

    def submit(self, app_dir: Path, on_poll: Any = None, run_config: str | None = None) -> int:
        rows = [{"round": r, "server_acc": 0.5, "wall_seconds": 1.0} for r in (1, 2)]
        (app_dir.parent / METRICS_JSONL).write_text("".join(json.dumps(row) + "\n" for row in rows))
        (app_dir.parent / "summary.json").write_text("{}")  # what the ServerApp writes last
        return 0

    def stop(self) -> None:
        pass


def test_resume_takes_the_run_folders_experiment_and_keeps_its_data_and_client_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    experiment = _saved_run(run_dir)
    resumed, settings = split_deploy_settings(_compose(f"deploy.resume={run_dir}"))
    assert resumed.to_json() == experiment.to_json() and settings.round_policy().resume
    kept = run_dir / "deploy" / "data" / "client-0" / CLIENT_STATE_DIR / "run-x" / "client-0" / "round-1.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"state of round 1")
    (run_dir / "deploy" / "superlink.db").write_bytes(b"the dead attempt's database")
    monkeypatch.setattr(deploy, "LoopbackDeployment", _FakeDeployment)
    rows = deploy.run_deployment(resumed, run_dir, settings, echo=False)
    assert [row["round"] for row in rows] == [1, 2]
    app_config = tomllib.loads((run_dir / "flower_app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config["resume"] is True and app_config["client-state-dir"] == ""
    assert app_config["output-dir"] == str(run_dir.resolve())
    assert kept.read_bytes() == b"state of round 1"
    # The deployment started as a fresh one: the first attempt's database (and logs, keys) set aside, not reused.
    assert (run_dir / "deploy" / "attempt-1" / "superlink.db").read_bytes() == b"the dead attempt's database"
    assert not (run_dir / "deploy" / "superlink.db").exists()
    # The resumed attempt's launcher log is appended where the first attempt's is, not in Hydra's new folder.
    launcher_log = (run_dir / deploy.LAUNCHER_LOG).read_text()
    assert "The dead attempt's component files are in" in launcher_log and "attempt-1" in launcher_log
    written = [getattr(h, "baseFilename", None) for h in logging.getLogger().handlers]
    assert str(run_dir.resolve() / deploy.LAUNCHER_LOG) not in written  # the handler is gone after the run
    with pytest.raises(ConfigError, match="resumes that folder"):
        deploy.run_deployment(resumed, tmp_path / "elsewhere", settings, echo=False)
    assert not (tmp_path / "elsewhere").exists()  # refused before anything is written


def test_resume_of_a_folder_without_progress_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deploy.resume: .* has no saved round"):
        split_deploy_settings(_compose(f"deploy.resume={tmp_path}"))


@pytest.mark.parametrize(
    ("experiment", "reason"),
    [('{"seed": 0}', "its experiment is no usable config"), ({"seed": 0}, "its experiment is no JSON text")],
)
def test_resume_of_a_damaged_progress_file_names_the_file(tmp_path: Path, experiment: Any, reason: str) -> None:
    """A config that is no whole experiment, or no JSON text: the error named neither the file nor the key."""
    (tmp_path / PROGRESS_DIR).mkdir()
    (tmp_path / PROGRESS_DIR / PROGRESS_FILE).write_text(json.dumps({"round": 1, "experiment": experiment}))
    with pytest.raises(ConfigError, match=rf"deploy.resume: .*{PROGRESS_FILE}: {reason}"):
        split_deploy_settings(_compose(f"deploy.resume={tmp_path}"))


def test_the_command_line_refuses_experiment_keys_with_resume(tmp_path: Path) -> None:
    _saved_run(tmp_path / "run")
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "fl_kd.simulations.deploy", f"deploy.resume={tmp_path / 'run'}", "seed=7",
               f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        == f"error: deploy.resume continues the experiment saved in {tmp_path / 'run'}; drop ['seed=7']"
    )


def test_a_moved_run_folder_resumes_under_the_id_of_its_first_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clients' states are named by the run id the first attempt kept in the folder, not by where it is now."""
    first = tmp_path / "first"
    _saved_run(first)
    assert folder_run_id(first) == str(first.resolve())  # what the first attempt's launcher wrote
    moved = tmp_path / "moved"
    first.rename(moved)
    resumed, settings = split_deploy_settings(_compose(f"deploy.resume={moved}"))
    monkeypatch.setattr(deploy, "LoopbackDeployment", _FakeDeployment)
    deploy.run_deployment(resumed, moved, settings, echo=False)
    app_config = tomllib.loads((moved / "flower_app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config["output-dir"] == str(moved.resolve()) and app_config["run-id"] == str(first.resolve())


def test_the_launcher_log_is_not_written_twice_where_hydra_already_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hydra_handler = logging.FileHandler(run_dir / deploy.LAUNCHER_LOG)  # what Hydra's job logging installs
    logging.getLogger().addHandler(hydra_handler)
    try:
        experiment, settings = split_deploy_settings(_compose(*EXPERIMENT))
        monkeypatch.setattr(deploy, "LoopbackDeployment", _FakeDeployment)
        deploy.run_deployment(experiment, run_dir, settings, echo=False)
    finally:
        logging.getLogger().removeHandler(hydra_handler)
        hydra_handler.close()
    lines = (run_dir / deploy.LAUNCHER_LOG).read_text().splitlines()
    deploying = [line for line in lines if line.startswith("Deploying ")]
    assert len(deploying) == 1, lines
