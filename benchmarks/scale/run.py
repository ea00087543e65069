"""One ``fl-kd-sim`` run, watched: memory of its processes every ``interval`` seconds, its rounds as they land.

``fl-kd-sim`` runs as a child in a session of its own that Linux signals when the benchmark dies
(``die_with_parent``), so a Ctrl-C reaches the benchmark alone, which then stops the run in order: SIGTERM to
``fl-kd-sim`` (its launcher stops ``flwr run``, the SuperLink and everything with the run's ``FLWR_HOME``), then
``fl_kd``'s own ``stop_leftovers`` and a last SIGTERM/SIGKILL for any process the benchmark ever counted that still
runs. How many processes were still running after ``fl-kd-sim`` ended is recorded: it should be 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT
from benchmarks.scale.memory import (
    RunProcesses,
    Snapshot,
    command_name,
    machine_memory,
    measure,
    ray_processes,
)
from fl_kd.simulations.flower_launcher import stop_leftovers
from fl_kd.simulations.processes import (
    Proc,
    die_with_parent,
    is_running,
    stop_processes,
    termination_as_interrupt,
    uninterruptible,
)

#: What every Flower process must see here (the launcher sets them too; set for ``fl-kd-sim`` itself as well).
RUN_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
METRICS = "metrics.jsonl"
CONSOLE = "console.log"
SAMPLES = "samples.csv"
STOP_WAIT_S = 60.0  # fl-kd-sim's own stop takes up to ~20 s (flwr run 5 s, then SIGTERM/SIGKILL of the rest)


@dataclass
class RunResult:
    """What one watched run produced; times in seconds after ``fl-kd-sim`` started."""

    command: list[str]
    run_dir: Path
    outcome: str  # "finished", "stopped after N rounds, as asked", "failed (exit code N)", "timed out after N s", ...
    exit_code: int | None = None
    wall_seconds: float = 0.0
    round_seen: dict[int, float] = field(default_factory=dict)  # round -> when its metrics row appeared
    round_peak_rss: dict[int, int] = field(default_factory=dict)  # round -> peak tree RSS up to then
    rows: list[dict[str, Any]] = field(default_factory=list)
    peak_rss: Snapshot = field(default_factory=lambda: Snapshot(0.0))
    peak_pss: Snapshot = field(default_factory=lambda: Snapshot(0.0))
    peak_processes: int = 0
    samples: int = 0
    machine_total: int = 0
    machine_in_use_start: int = 0
    machine_in_use_peak: int = 0
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stray_ray_peak: int = 0  # Ray processes that appeared during the run but were not counted as the run's
    stray_ray_names: set[str] = field(default_factory=set)  # what they ran
    left_running: int = 0  # the run's processes still running once fl-kd-sim had ended (then stopped here)
    stop_seconds: float = 0.0  # from the benchmark's SIGTERM (timeout, stop after rounds) until all had ended

    @property
    def finished(self) -> bool:
        """Whether the run did what was asked: all its rounds, or the rounds to measure before it was stopped."""
        return self.outcome == "finished" or self.outcome.startswith("stopped after")


def fl_kd_sim() -> list[str]:
    """The ``fl-kd-sim`` of this environment."""
    script = Path(sys.executable).parent / "fl-kd-sim"
    if script.exists():
        return [str(script)]
    found = shutil.which("fl-kd-sim")
    return [found] if found else [sys.executable, "-m", "fl_kd.simulations.run"]


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` so far (a line still being written is left for later)."""
    try:
        text = (run_dir / METRICS).read_text()
    except OSError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is not complete yet
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class _Watch:
    """Peaks and samples of one run."""

    def __init__(self, result: RunResult, samples_path: Path) -> None:
        self.result = result
        self.samples = samples_path.open("w")
        self.samples.write("seconds,processes,rss_bytes,pss_bytes,machine_in_use_bytes\n")

    def sample(self, procs: Sequence[Proc], seconds: float) -> Snapshot:
        snapshot = measure(procs, seconds)
        result = self.result
        _, in_use = machine_memory()
        result.samples += 1
        result.machine_in_use_peak = max(result.machine_in_use_peak, in_use)
        result.peak_processes = max(result.peak_processes, len(snapshot.processes))
        if snapshot.rss > result.peak_rss.rss:
            result.peak_rss = snapshot
        if snapshot.pss > result.peak_pss.pss:
            result.peak_pss = snapshot
        self.samples.write(f"{seconds:.2f},{len(snapshot.processes)},{snapshot.rss},{snapshot.pss},{in_use}\n")
        return snapshot

    def close(self) -> None:
        self.samples.close()


def run_scale(
    overrides: Sequence[str],
    run_dir: Path,
    timeout_s: float,
    interval_s: float = 0.5,
    stop_after_rounds: int | None = None,
    say: Callable[[str], None] | None = None,
    program: Sequence[str] | None = None,
) -> RunResult:
    """Run ``fl-kd-sim <overrides>`` into ``run_dir`` and watch it; a ``KeyboardInterrupt`` goes on once all is stopped.

    Parameters
    ----------
    overrides : Sequence[str]
        Hydra overrides of ``fl-kd-sim`` (``hydra.run.dir`` is added).
    run_dir : Path
        The run folder (must not hold an earlier run); ``console.log`` and ``samples.csv`` go there too.
    timeout_s : float
        The run is stopped after this long and reported as timed out, with the rounds it finished.
    interval_s : float (default: 0.5)
        Seconds between two memory samples.
    stop_after_rounds : int | None (default: None)
        Stop the run (as an interrupt would) once this many rounds have ended; None runs it to its end.
    program : Sequence[str] | None (default: None)
        The command to run instead of this environment's ``fl-kd-sim`` (the tests run a stand-in).
    """
    say = say or _say
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    command = [*(program or fl_kd_sim()), *overrides, f"hydra.run.dir={run_dir}"]
    result = RunResult(command=command, run_dir=run_dir, outcome="interrupted")
    result.machine_total, result.machine_in_use_start = machine_memory()
    result.machine_in_use_peak = result.machine_in_use_start
    result.load_start = os.getloadavg()
    ray_before = set(ray_processes())
    watch = _Watch(result, run_dir / SAMPLES)
    process: subprocess.Popen[bytes] | None = None
    processes: RunProcesses | None = None
    start = time.monotonic()
    with termination_as_interrupt():  # SIGTERM and SIGHUP, too, must reach the `finally`
        try:
            with (run_dir / CONSOLE).open("wb") as console:
                process = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env={**os.environ, **RUN_ENV},
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
            processes = RunProcesses(process.pid, f"FLWR_HOME={run_dir / '.flwr'}")
            say(f"started (pid {process.pid}): {' '.join(command)}")
            while process.poll() is None:
                seconds = time.monotonic() - start
                if seconds > timeout_s:
                    result.outcome = f"timed out after {timeout_s:.0f} s"
                    break
                counted = processes.find()
                snapshot = watch.sample(counted, seconds)
                stray = ray_processes(exclude=ray_before | processes.seen)
                result.stray_ray_peak = max(result.stray_ray_peak, len(stray))
                result.stray_ray_names.update(command_name(proc.pid) for proc in stray)
                _note_rounds(result, seconds, snapshot, say)
                if stop_after_rounds is not None and len(result.round_seen) >= stop_after_rounds:
                    done = len(result.round_seen)
                    result.outcome = f"stopped after {done} round{'s' if done != 1 else ''}, as asked"
                    break
                time.sleep(interval_s)
            else:
                result.outcome = "finished" if process.returncode == 0 else f"failed (exit code {process.returncode})"
        finally:
            with uninterruptible():  # a second Ctrl-C must not leave half the run behind
                stopping = time.monotonic()
                result.left_running = _stop(process, processes, run_dir / ".flwr")
                result.wall_seconds = time.monotonic() - start
                result.stop_seconds = time.monotonic() - stopping
                result.exit_code = process.returncode if process is not None else None
                watch.close()
                result.rows = read_rows(run_dir)
                _note_rounds(result, result.wall_seconds, None, say)
                result.load_end = os.getloadavg()
    return result


def _say(line: str) -> None:
    print(line, flush=True)


def _note_rounds(result: RunResult, seconds: float, snapshot: Snapshot | None, say: Callable[[str], None]) -> None:
    """Record when each new round's row appeared, and say so."""
    for row in read_rows(result.run_dir):
        round = int(row.get("round", 0))
        if round in result.round_seen:
            continue
        result.round_seen[round] = seconds
        result.round_peak_rss[round] = result.peak_rss.rss
        memory = f"; tree RSS now {snapshot.rss / 2**30:.2f} GiB" if snapshot is not None else ""
        say(
            f"round {round} done at {seconds:.1f} s (round {float(row.get('wall_seconds', 0.0)):.1f} s){memory}; "
            f"peak RSS so far {result.peak_rss.rss / 2**30:.2f} GiB"
        )


def _stop(process: subprocess.Popen[bytes] | None, processes: RunProcesses | None, flwr_home: Path) -> int:
    """Stop ``fl-kd-sim`` (which stops its run), then anything of the run left; returns how many were left."""
    if process is None:
        return 0
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if processes is None:
        return 0
    left = processes.still_running()
    if left:
        stop_leftovers(flwr_home)  # fl_kd's own cleanup, by the run's FLWR_HOME
        stop_processes(lambda: [proc for proc in processes.seen if is_running(proc)], grace_s=10.0)
    return len(left)
