"""Finding and stopping processes by PID: what keeps both launchers from leaving Flower processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fl_kd.simulations.flower_launcher import stop_superlink, superlink_processes
from fl_kd.simulations.processes import (
    Proc,
    ProcessSupervisor,
    Terminated,
    descendants,
    find_processes,
    identify,
    interrupt_exit_code,
    is_running,
    stop_processes,
    termination_as_interrupt,
    uninterruptible,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SLEEP = "import time; time.sleep(60)"
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
)
# A parent that stops on SIGTERM, with a child in a session of its own that ignores SIGTERM (as a hung app would).
STUBBORN_CHILD = f"""
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {IGNORE_SIGTERM!r}], start_new_session=True, stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -c code *args``; whatever is left is killed at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (which nothing here may reap: its parent was killed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_process_is_named_by_pid_and_start_time(spawn: Spawn) -> None:
    process = spawn(SLEEP)
    proc = identify(process.pid)
    assert proc is not None and is_running(proc)
    assert not is_running(Proc(process.pid, proc.start_time + 1)), "a reused PID is another process"
    process.kill()
    process.wait()
    assert not is_running(proc) and identify(process.pid) is None


def test_find_processes_needs_every_needle_and_skips_this_process(spawn: Spawn, tmp_path: Path) -> None:
    home = str(tmp_path / ".flwr")
    match = spawn(SLEEP, "flower-superlink", home)
    spawn(SLEEP, "flower-supernode", home)  # names the folder, but is no SuperLink
    spawn(SLEEP, "flower-superlink", str(tmp_path / "elsewhere"))
    deadline = time.monotonic() + 10
    while len(find_processes(str(tmp_path))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(find_processes(str(tmp_path))) == 3
    assert [proc.pid for proc in find_processes("flower-superlink", home)] == [match.pid]
    assert os.getpid() not in {proc.pid for proc in find_processes(sys.executable)}


def test_stop_superlink_stops_only_this_runs_superlink(spawn: Spawn, tmp_path: Path) -> None:
    ours = tmp_path / "run" / ".flwr"
    link = spawn(SLEEP, "flower-superlink", str(ours))
    other = spawn(SLEEP, "flower-superlink", str(tmp_path / "other" / ".flwr"))
    deadline = time.monotonic() + 10
    while not superlink_processes(ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [proc.pid for proc in superlink_processes(ours)] == [link.pid]
    stop_superlink(ours, timeout=5.0)
    assert link.wait(timeout=5) != 0 and other.poll() is None
    assert superlink_processes(ours) == []


def test_stop_processes_kills_what_ignores_sigterm(spawn: Spawn) -> None:
    polite, stubborn = spawn(SLEEP), spawn(IGNORE_SIGTERM)
    assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == b"1"  # its handler is set
    procs = [identify(polite.pid), identify(stubborn.pid)]

    def running() -> list[Proc]:
        polite.poll(), stubborn.poll()  # reap, as a parent must
        return [proc for proc in procs if proc is not None and is_running(proc)]

    killed = stop_processes(running, grace_s=0.5)
    assert [proc.pid for proc in killed] == [stubborn.pid]
    # running() may poll just before the kernel makes it a zombie, so reap here rather than read a stale returncode
    assert polite.wait(timeout=5) == -15 and stubborn.wait(timeout=5) == -9


def test_supervisor_stops_children_that_left_the_session_and_ignore_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_CHILD)
    supervisor = ProcessSupervisor()
    log_path = tmp_path / "parent.log"
    parent = supervisor.start("parent", [sys.executable, str(script)], {}, log_path, tmp_path)
    deadline = time.monotonic() + 20
    while len(log_path.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    header, child_line = log_path.read_text().splitlines()
    assert header == f"$ {sys.executable} {script}", "a component's log starts with its command line"
    child = int(child_line)
    assert [proc.pid for proc in descendants([parent.pid])] == [child]  # in a session of its own, still a child
    assert {proc.pid for proc in supervisor.running()} == {parent.pid, child}
    killed = supervisor.stop(grace_s=1.0)
    assert [proc.pid for proc in killed] == [child]  # the parent stopped on SIGTERM; the child needed SIGKILL
    assert supervisor.running() == []
    assert not _alive(child)


def test_sigterm_becomes_an_interrupt_with_the_shells_exit_code_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught, termination_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs before this ends
    assert isinstance(caught.value, Terminated) and caught.value.signum == signal.SIGTERM
    assert str(caught.value) == "received signal SIGTERM"
    assert interrupt_exit_code(caught.value) == 143 and interrupt_exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_nothing_interrupts_the_stopping() -> None:
    with termination_as_interrupt(), uninterruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # would raise here if either signal were still handled


HOLDER = """
import sys, time
from fl_kd.simulations.processes import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_folder_another_live_run_holds_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path: Path) -> None:
    """Two runs started in the same second get the same Hydra folder: the second stops before writing a file."""
    from fl_kd.simulations.processes import RUN_LOCK, FolderInUseError, hold_folder
    from fl_kd.simulations.run import run_experiment
    from tests.kd_configs import tiny_config

    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=rf"{folder} is being written by another run \(PID {holder.pid}\)"):
            run_experiment(tiny_config(simulation={"backend": "inprocess"}), folder)
        assert sorted(path.name for path in folder.iterdir()) == [RUN_LOCK]  # nothing of the second run
        holder.kill()  # killed outright: its lock stays behind, stale
        holder.wait()
        with hold_folder(folder):
            assert (folder / RUN_LOCK).read_text().split()[0] == str(os.getpid())
        assert not (folder / RUN_LOCK).exists()
    finally:
        holder.kill()
        holder.wait()
