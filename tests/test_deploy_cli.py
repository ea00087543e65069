"""``fl-kd-deploy`` as a user runs it: a mistake is one line on stderr, and a failed start leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fl_kd.simulations.loopback import running_processes


def _fl_kd_deploy(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "fl_kd.simulations.deploy", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)


def test_a_bad_deploy_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _fl_kd_deploy(tmp_path / "run", "deploy.certificates=/nonexistent/tls")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: deploy.certificates: certificate folder /nonexistent/tls lacks ca.crt")


def test_a_deployment_that_cannot_start_stops_everything_it_started(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _fl_kd_deploy(run_dir, "num_clients=2", "deploy.startup_timeout_s=0.1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: timed out waiting for the SuperLink"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("Deploying fedgems on digits: 2 clients"), result.stdout
    assert running_processes(run_dir) == []
    assert (run_dir / "deploy" / "superlink.log").read_text().startswith("$ flower-superlink --host 127.0.0.1")


def test_what_fl_kd_sim_checks_before_flower_starts_is_checked_before_any_component_starts(tmp_path: Path) -> None:
    """A missing checkpoint was a ServerApp's traceback, exit 1, once the SuperLink and every SuperNode were up."""
    run_dir = tmp_path / "run"
    result = _fl_kd_deploy(run_dir, "num_clients=2", f"strategy.checkpoint={tmp_path / 'none.pt'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'none.pt'}: no such file"]
    assert result.stdout == "" and not (run_dir / "deploy").exists()  # nothing was started
