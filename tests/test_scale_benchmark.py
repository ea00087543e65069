"""The scale benchmark's pure parts: which processes count, their memory, the rounds read, the section written.

Its runs take minutes; these take a second, against processes they spawn and stop themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from benchmarks.common import write_section
from benchmarks.scale.__main__ import overrides, parse_args
from benchmarks.scale.memory import RunProcesses, Snapshot, command_name, measure, pss_bytes, rss_bytes
from benchmarks.scale.report import BEGIN, END, render, round_plan
from benchmarks.scale.run import RunResult, read_rows, run_scale
from fl_kd.simulations.processes import Proc, identify, is_running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: A child that holds ~64 MiB and starts a grandchild, then waits to be stopped.
_PARENT = (
    "import subprocess, sys, time\n"
    "block = bytearray(64 * 2**20)\n"
    "block[::4096] = b'x' * len(block[::4096])\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _stop(*pids: int) -> None:
    for pid in pids:
        proc = identify(pid)
        if proc is not None and is_running(proc):
            os.kill(pid, signal.SIGKILL)


def test_the_tree_is_found_and_its_memory_summed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    try:
        found = RunProcesses(parent.pid).find()
        assert {proc.pid for proc in found} == {parent.pid, grandchild}
        snapshot = measure(found, seconds=1.5)
        assert snapshot.rss >= 64 * 2**20
        assert snapshot.pss > 0 and snapshot.pss <= snapshot.rss
        assert {proc.pid for proc in snapshot.processes} == {parent.pid, grandchild}
        assert command_name(parent.pid) == "python -c"
    finally:
        _stop(grandchild, parent.pid)
        parent.wait()
    assert rss_bytes(parent.pid) is None and pss_bytes(parent.pid) is None
    assert measure([Proc(parent.pid, 0)], seconds=0.0).processes == []


def test_a_process_outside_the_tree_counts_by_its_environment(tmp_path: Path) -> None:
    """A daemon re-parented away from the run (as Ray's and the SuperLink are) is found by the run's FLWR_HOME."""
    home = tmp_path / "run" / ".flwr"
    env = {**os.environ, "FLWR_HOME": str(home)}
    # The shell starts the sleeper in the background and exits: the sleeper leaves the tree of what we started.
    launcher = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(60)' >/dev/null 2>&1 & echo $!"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(launcher.stdout.strip())
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "FLWR_HOME": f"{home}0"}
    )
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _wait_for(lambda: identify(orphan) is not None)
        tree_only = {proc.pid for proc in RunProcesses(root.pid).find()}
        assert tree_only == {root.pid}
        run = RunProcesses(root.pid, f"FLWR_HOME={home}")
        assert {proc.pid for proc in run.find()} == {root.pid, orphan}  # not the one whose home is "<home>0"
        _stop(orphan)
        _wait_for(lambda: orphan not in {proc.pid for proc in run.still_running()})
        assert any(proc.pid == orphan for proc in run.seen)
    finally:
        _stop(orphan, other.pid, root.pid)
        other.wait()
        root.wait()


def test_command_name_skips_interpreter_flags(tmp_path: Path) -> None:
    script = tmp_path / "log_monitor.py"
    script.write_text("import time; time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-u", "-B", str(script), "--flag"])
    try:
        _wait_for(lambda: command_name(process.pid) == "log_monitor.py")
    finally:
        process.kill()
        process.wait()


def test_snapshot_groups_by_process_name() -> None:
    from benchmarks.scale.memory import ProcessMemory

    snapshot = Snapshot(
        2.0,
        [
            ProcessMemory(1, "raylet", 100, 50),
            ProcessMemory(2, "ray::ClientAppActor", 300, 200),
            ProcessMemory(3, "ray::ClientAppActor", 300, None),
        ],
    )
    assert snapshot.rss == 700 and snapshot.pss == 250
    assert snapshot.by_name() == [("ray::ClientAppActor", 2, 600, 200), ("raylet", 1, 100, 50)]


def test_read_rows_skips_a_line_still_being_written(tmp_path: Path) -> None:
    assert read_rows(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "wall_seconds": 2.5}\n{"round": 2, "wall')
    assert read_rows(tmp_path) == [{"round": 1, "wall_seconds": 2.5}]


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS_KD.md"
    other = "<!-- start-up:begin -->\n## Start-up\nkept\n<!-- start-up:end -->"
    report.write_text(f"# Head\n\n{other}\n")
    write_section(report, f"{BEGIN}\nfirst\n{END}")
    write_section(report, f"{BEGIN}\nsecond\n{END}")
    text = report.read_text()
    assert text == f"# Head\n\n{other}\n\n{BEGIN}\nsecond\n{END}\n"


def _config(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {
        "num_clients": 1000,
        "seed": 0,
        "dataset": {"name": "fashion_mnist"},
        "strategy": {"rounds": 3, "fraction_fit": 0.02},
        "evaluation": {"test_samples": 2000, "fraction_clients": 0.02},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def test_round_plan_follows_the_sampled_clients(tmp_path: Path) -> None:
    config = yaml.safe_load((_config(tmp_path) / "config.yaml").read_text())
    trained, evaluated, messages, images = round_plan(config, 1)
    assert (trained, evaluated, images) == (20, 20, "2,000") and 20 <= messages <= 40
    assert round_plan(config, 3)[1:] == (1000, 1000, "all")


def test_render_holds_the_figures_and_the_command(tmp_path: Path) -> None:
    from benchmarks.scale.memory import ProcessMemory

    run_dir = _config(tmp_path)
    rows = [{"round": r, "wall_seconds": s} for r, s in ((1, 4.0), (2, 6.0), (3, 300.0))]
    peak = Snapshot(80.0, [ProcessMemory(1, "flwr-simulation", 3 * 2**30, 2 * 2**30)])
    result = RunResult(
        command=["/venv/bin/fl-kd-sim", "num_clients=1000", f"hydra.run.dir={run_dir}"],
        run_dir=run_dir,
        outcome="finished",
        exit_code=0,
        wall_seconds=400.0,
        round_seen={1: 60.0, 2: 66.0, 3: 370.0},
        round_peak_rss={1: 2**30, 2: 2**30, 3: 3 * 2**30},
        rows=rows,
        peak_rss=peak,
        peak_pss=peak,
        peak_processes=12,
    )
    section = render(result, "python -m benchmarks.scale", interval_s=0.5)
    assert section.startswith(BEGIN) and section.endswith(END)
    assert "## Scale: 1,000 virtual clients on fashion_mnist, Flower simulation" in section
    assert "fl-kd-sim num_clients=1000 hydra.run.dir=RUN" in section
    assert "**3.00 GiB** (fits in 24 GiB" in section
    assert "start-up: command start to round 1's start | 56.0 s" in section
    assert "**5.0 s** mean (4.0-6.0)" in section
    assert "| 3 | 20 | 1,000 | 1,000 | all | 300.0 | 370 | 3.00 |" in section
    assert "after the last round to the command's end | 30.0 s" in section
    assert "stopping the run" not in section and "was stopped" not in section
    result.outcome, result.rows, result.stop_seconds = "stopped after 2 rounds, as asked", rows[:2], 3.5
    stopped = render(result, "python -m benchmarks.scale", interval_s=0.5)
    assert "**stopped after 2 rounds, as asked**, 2 of 3 rounds" in stopped and "was stopped (SIGTERM" in stopped
    assert "last round (every client" not in stopped and "SIGTERM until every process had ended | 3.5 s" in stopped


def test_overrides_end_with_the_users_own() -> None:
    args = parse_args(["--clients", "40", "--override", "strategy.rounds=5"])
    assert overrides(args)[-1] == "strategy.rounds=5" and "num_clients=40" in overrides(args)
    with pytest.raises(SystemExit):
        parse_args(["--clients", "0"])


#: Stands in for fl-kd-sim: two rounds, and a helper that leaves its tree but keeps the run's FLWR_HOME (as Ray's
#: daemons do); it dies on SIGTERM without stopping that helper, so the benchmark must.
_FAKE_RUN = """
import json, os, subprocess, sys, time
run_dir = [a for a in sys.argv if a.startswith("hydra.run.dir=")][0].split("=", 1)[1]
env = {**os.environ, "FLWR_HOME": os.path.join(run_dir, ".flwr")}
launcher = subprocess.run(["sh", "-c", sys.executable + " -c 'import time; time.sleep(60)' >/dev/null 2>&1 & echo $!"],
                          env=env, capture_output=True, text=True)
with open(os.path.join(run_dir, "helper.pid"), "w") as f:
    f.write(launcher.stdout.strip())
for round in (1, 2):
    time.sleep(0.3)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"round": round, "wall_seconds": 0.3}) + "\\n")
time.sleep(60)
"""


def test_a_stopped_run_leaves_no_process_behind(tmp_path: Path) -> None:
    fake = tmp_path / "fake_run.py"
    fake.write_text(_FAKE_RUN)
    run_dir = tmp_path / "run"
    result = run_scale(
        [],
        run_dir,
        timeout_s=30,
        interval_s=0.1,
        stop_after_rounds=1,
        say=lambda _: None,
        program=[sys.executable, str(fake)],
    )
    helper = int((run_dir / "helper.pid").read_text())
    try:
        assert result.outcome == "stopped after 1 round, as asked" and result.finished
        assert result.left_running == 1  # the helper: found by FLWR_HOME, stopped by the benchmark
        assert identify(helper) is None or not is_running(identify(helper))
        assert result.peak_processes >= 2 and result.peak_rss.rss > 0 and result.samples > 0
        assert (run_dir / "samples.csv").read_text().startswith("seconds,processes")
    finally:
        _stop(helper)


def test_a_superlink_that_did_not_start_is_retried_from_what_flower_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fl-kd-sim sends Flower's console to the run folder's flower.log: the retry read only its own console.log."""
    import benchmarks.scale.__main__ as scale
    from fl_kd.simulations.flower_launcher import SUPERLINK_START_FAILED
    from fl_kd.simulations.run import FLOWER_LOG

    attempts: list[Path] = []

    def failed_run(_overrides: list[str], run_dir: Path, *_: object) -> SimpleNamespace:
        attempts.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # attempts within one second share a stamp here
        (run_dir / FLOWER_LOG).write_text(f"{SUPERLINK_START_FAILED} 15s. See logs at ...\n")
        return SimpleNamespace(outcome="failed (exit code 1)", run_dir=run_dir, finished=False)

    monkeypatch.setattr(scale, "run_scale", failed_run)
    monkeypatch.setattr(scale, "save_summary", lambda _result: None)
    assert (
        scale.main(["--clients", "3", "--retries", "2", "--out", str(tmp_path), "--report", str(tmp_path / "r.md")])
        == 1
    )
    assert len(attempts) == 3 and not (tmp_path / "r.md").exists()
