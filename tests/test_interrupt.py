"""An interrupted ``fl-kd-sim`` stops every process of its Flower run and says where its partial results are.

The run is a real one (SuperLink, SuperExec, ``flwr-simulation``, Ray), small enough to reach round 1 quickly and
long enough (50 rounds) to be still running when the signal comes. Its processes are found as the launcher finds
them: by the run's ``FLWR_HOME`` in their environment.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_kd.results import METRICS_JSONL
from fl_kd.simulations.flower_launcher import (
    FlowerStartError,
    run_flower_simulation,
    stop_leftovers,
    superlink_processes,
)
from fl_kd.simulations.processes import PROC, Proc, Terminated, find_processes, interrupt_exit_code
from fl_kd.simulations.run import interrupted_line

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SMALL_RUN = [
    "num_clients=3",
    "transfer.labelled=60",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "strategy.rounds=50",
    "strategy.server_epochs=1",
    "partition.min_size=20",
]
ROUND_ONE_TIMEOUT_S = 300.0  # start-up alone takes 20-60 s on a busy 2-core machine
STOP_TIMEOUT_S = 90.0  # the launcher gives the SuperLink 15 s and the rest 10 s, then kills


def run_processes(flwr_home: Path) -> list[Proc]:
    """Processes whose environment names this run's ``FLWR_HOME`` (the finder of ``stop_leftovers``)."""
    return find_processes(f"FLWR_HOME={flwr_home}\0", where=("environ",))


def command_lines(procs: list[Proc]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append((PROC / str(proc.pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(lines)


def finished_rounds(run_dir: Path) -> int:
    """Complete rows of ``metrics.jsonl`` (a line still being written does not count)."""
    try:
        lines = (run_dir / METRICS_JSONL).read_text().splitlines()
    except OSError:
        return 0
    count = 0
    for line in lines:
        try:
            count += isinstance(json.loads(line), dict)
        except ValueError:
            pass
    return count


@pytest.mark.slow
def test_sigterm_stops_every_process_and_points_at_the_finished_rounds(tmp_path: Path) -> None:
    run_dir = (tmp_path / "run").resolve()
    flwr_home = run_dir / ".flwr"
    log_path = tmp_path / "fl-kd-sim.log"
    command = [str(Path(sys.executable).parent / "fl-kd-sim"), *SMALL_RUN, f"hydra.run.dir={run_dir}"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ROUND_ONE_TIMEOUT_S
        while finished_rounds(run_dir) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        output = log_path.read_text(errors="replace")
        assert process.poll() is None, f"fl-kd-sim ended before round 1:\n{output[-3000:]}"
        assert finished_rounds(run_dir) >= 1, f"no round within {ROUND_ONE_TIMEOUT_S:.0f} s:\n{output[-3000:]}"
        running = command_lines(run_processes(flwr_home))
        for part in ("flower-superlink", "flwr-simulation", "raylet", "gcs_server"):
            assert part in running, f"{part} not found by FLWR_HOME; the check below would prove nothing:\n{running}"

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT_S)

        left = run_processes(flwr_home)
        assert left == [], f"still running after fl-kd-sim exited:\n{command_lines(left)}"
        assert code == 128 + signal.SIGTERM
        output = log_path.read_text(errors="replace")
        lines = [line for line in output.splitlines() if line.startswith("interrupted (received signal SIGTERM)")]
        assert len(lines) == 1, output[-3000:]
        assert "partial results" in lines[0] and str(run_dir / METRICS_JSONL) in lines[0]
        assert finished_rounds(run_dir) >= 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stop_leftovers(flwr_home)


def test_a_failing_preflight_stops_what_flower_started_meanwhile(tmp_path: Path) -> None:
    flwr_home = tmp_path.resolve() / ".flwr"
    seen: list[Proc] = []

    def preflight() -> None:  # runs while Flower starts; fails once there is a SuperLink to stop
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            seen.extend(superlink_processes(flwr_home))
            time.sleep(0.1)
        raise FileNotFoundError("no such checkpoint")

    try:
        with pytest.raises(FileNotFoundError, match="no such checkpoint"):
            run_flower_simulation(
                tmp_path, "fl_kd.strategies.kd_app:app", "fl_kd.clients.kd_app:app", {}, 2, preflight=preflight
            )
        assert seen, "the SuperLink never started"
        left = run_processes(flwr_home)
        assert left == [], f"still running after the failed check:\n{command_lines(left)}"
    finally:
        stop_leftovers(flwr_home)


def test_the_interrupted_line_names_ctrl_c_and_the_signal() -> None:
    """A plain Ctrl-C has no message: the line read "interrupted ()" (an exception object is always true)."""
    assert interrupted_line(Path("/nowhere"), KeyboardInterrupt()).startswith("interrupted (Ctrl-C); ")
    assert interrupted_line(Path("/nowhere"), Terminated(signal.SIGTERM)).startswith(
        "interrupted (received signal SIGTERM); "
    )
    assert interrupt_exit_code(Terminated(signal.SIGTERM)) == 143 and interrupt_exit_code(KeyboardInterrupt()) == 130


def test_a_server_app_that_gives_no_sign_of_life_stops_the_run_with_an_error(tmp_path: Path) -> None:
    """Flower keeps a run whose ServerApp process never comes up "starting", and ``flwr run`` waits with it: the
    launcher gives up after its start-up limit, stopping everything (here the sign never comes, and the limit is
    short)."""
    flwr_home = tmp_path.resolve() / ".flwr"
    try:
        with pytest.raises(FlowerStartError, match=r"ServerApp did not start within 3 s; every process"):
            run_flower_simulation(
                tmp_path, "fl_kd.strategies.kd_app:app", "fl_kd.clients.kd_app:app", {}, 2,
                started=lambda: False, start_timeout_s=3,
            )  # fmt: skip
        left = run_processes(flwr_home)
        assert left == [], f"still running after the start-up limit:\n{command_lines(left)}"
    finally:
        stop_leftovers(flwr_home)
