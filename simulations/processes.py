"""Find, watch and stop the processes a launcher started, by PID, through Linux's ``/proc``.

Flower components start processes of their own (a SuperLink starts a SuperExec, which starts one ServerApp or
ClientApp process per task), some in new sessions, so neither a process group nor the launcher's own ``Popen``
objects reach all of them. Both launchers (``fl-kd-sim``'s local SuperLink and ``fl-kd-deploy``'s SuperLink and
SuperNodes) find them here instead: by the process tree, or by what their command line or environment names.

A process is named by its PID *and* its start time (:class:`Proc`): PIDs get reused, and a signal must never reach
a process that merely inherited the number. Elsewhere than Linux nothing is found, and nothing is signalled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from fl_kd.config import ConfigError

log = logging.getLogger(__name__)

PROC = Path("/proc")
ON_LINUX = sys.platform.startswith("linux")


class Proc(NamedTuple):
    """One process for good: its PID and its start time (clock ticks after boot), which together are never reused."""

    pid: int
    start_time: int


class _Stat(NamedTuple):
    ppid: int
    state: str
    start_time: int


def _stat(pid: int) -> _Stat | None:
    """Parent, state and start time of a live process, ``None`` if it is gone (or this is not Linux)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return _Stat(int(fields[1]), fields[0], int(fields[19]))


def _pids() -> list[int]:
    with contextlib.suppress(OSError):
        return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]
    return []


def identify(pid: int) -> Proc | None:
    """The process that has ``pid`` now, or ``None`` if there is none."""
    stat = _stat(pid)
    return None if stat is None else Proc(pid, stat.start_time)


def is_running(proc: Proc) -> bool:
    """Alive and still the same process; a zombie only waits to be reaped, it does not count."""
    stat = _stat(proc.pid)
    return stat is not None and stat.state not in ("Z", "X") and stat.start_time == proc.start_time


def descendants(pids: Sequence[int]) -> list[Proc]:
    """Children, grandchildren, ... of ``pids`` (a process whose parent died is re-parented, and lost to the tree)."""
    tree: dict[int, list[Proc]] = {}
    for pid in _pids():
        if (stat := _stat(pid)) is not None:
            tree.setdefault(stat.ppid, []).append(Proc(pid, stat.start_time))
    found: list[Proc] = []
    todo = list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def ancestors(pid: int) -> set[int]:
    """``pid`` and every process above it."""
    found = {pid}
    while (stat := _stat(pid)) is not None and stat.ppid > 0 and stat.ppid not in found:
        pid = stat.ppid
        found.add(pid)
    return found


def find_processes(*needles: str, where: Sequence[str] = ("cmdline",)) -> list[Proc]:
    """Running processes whose command line (or other ``/proc/<pid>/`` file in ``where``) holds every needle.

    This process and its ancestors are left out: the command that started a launcher may name the same folder.
    Files of other users' processes are unreadable and skipped.
    """
    wanted = [needle.encode() for needle in needles]
    ours = ancestors(os.getpid())
    found = []
    for pid in _pids():
        if pid in ours:
            continue
        for name in where:
            try:
                raw = (PROC / str(pid) / name).read_bytes()
            except OSError:
                continue
            if all(needle in raw for needle in wanted) and (proc := identify(pid)) is not None and is_running(proc):
                found.append(proc)
                break
    return found


def send(proc: Proc, signum: int) -> None:
    """Signal ``proc`` unless it has ended (its PID may belong to another process by now)."""
    if is_running(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def stop_processes(running: Callable[[], Sequence[Proc]], grace_s: float, kill_wait_s: float = 5.0) -> list[Proc]:
    """SIGTERM what ``running()`` returns; SIGKILL whatever still runs after ``grace_s``. Returns the killed ones.

    ``running`` is asked again while waiting, so a process started meanwhile (a task's app, say) is caught too.
    """
    for proc in running():
        send(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = list(running())
    for proc in killed:
        log.warning("Process %d did not stop on SIGTERM within %.0f s; killing it", proc.pid, grace_s)
        send(proc, signal.SIGKILL)
    deadline = time.monotonic() + kill_wait_s  # SIGKILL is not instant: the kernel still has to tear it down
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def die_with_parent() -> None:
    """In a child before exec: a session of its own, and SIGTERM from Linux when its parent dies, even by SIGKILL."""
    os.setsid()  # a Ctrl-C in the terminal reaches the launcher only, which stops everything in order
    exit_with_parent()


RUN_LOCK = "run.lock"
"""Held in a run folder while a run writes there (:func:`hold_folder`)."""
LOCK_WRITE_S = 10.0
"""An unreadable lock younger than this is one being written, not a stale one."""


class FolderInUseError(ConfigError):
    """Another live run holds the folder (a user error: one line, exit 2)."""


@contextlib.contextmanager
def hold_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder/run.lock`` (this process's PID and start time) while a run writes in ``folder``.

    Two runs started in the same second share Hydra's default folder; without this the second truncates and
    interleaves the first's files, and stops its Flower processes. A lock whose process has ended (a run killed
    outright) is taken over, so a resumed run can use its folder again. Outside Linux no process can be identified,
    and the lock never refuses.

    Raises
    ------
    FolderInUseError
        A live process holds the lock.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / RUN_LOCK
    me = identify(os.getpid())
    while True:
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            starting = holder is None and _age_s(path) < LOCK_WRITE_S  # created, its PID not yet written
            if starting or (holder is not None and is_running(holder)):
                who = f"PID {holder.pid}" if holder is not None else "starting"
                raise FolderInUseError(
                    f"{folder} is being written by another run ({who}): give each run a folder of its own "
                    "(hydra.run.dir=...), since two runs started in the same second share the default one"
                ) from None
            path.unlink(missing_ok=True)  # its run has ended: the lock is stale
    with os.fdopen(handle, "w") as lock:
        lock.write(f"{os.getpid()} {me.start_time if me is not None else 0}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:  # gone meanwhile: try again
        return math.inf


def _lock_holder(path: Path) -> Proc | None:
    try:
        pid, start_time = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):  # unreadable, or half-written by a run that died at once
        return None
    return Proc(pid, start_time)


def exit_with_parent(parent: int | None = None) -> None:
    """In a child: SIGTERM from Linux when its parent dies, even by SIGKILL (elsewhere nothing happens).

    ``parent`` is the parent's pid as the parent saw it: a child whose parent died before this call (so that no
    signal will come) exits at once.
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if parent is not None and os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` that :func:`termination_as_interrupt` raises for SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signal.Signals(signum).name}")
        self.signum = signum


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's code for a command ended by ``interrupt``'s signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else int(signal.SIGINT))


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` (a ``KeyboardInterrupt``) meanwhile, so ``finally`` blocks
    stop the processes: Python's default SIGTERM ends the process at once and runs no ``finally`` at all."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    with _handlers((signal.SIGTERM, signal.SIGHUP), interrupt):
        yield


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP meanwhile: a second Ctrl-C while stopping must not leave processes behind."""
    with _handlers((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _handlers(signals: Sequence[signal.Signals], handler: Callable[[int, object], None] | int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ProcessSupervisor:
    """Start a deployment's processes with their logs in the run folder; stop them all, and their children, by PID.

    Every descendant seen is recorded (call :meth:`track` now and then), so that one whose parent has died is
    still stopped at the end.
    """

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: set[Proc] = set()
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str], log_path: Path | None, cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``name``; its output goes to ``log_path``, after the command line (or to a pipe)."""
        log.info("Starting %s: %s", name, " ".join(command))
        output: IO[bytes] | int = subprocess.PIPE
        if log_path is not None:
            output = log_path.open("wb")
            output.write(f"$ {' '.join(command)}\n".encode())
            output.flush()
            self._logs.append(output)
        process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if ON_LINUX else None,
            start_new_session=not ON_LINUX,
        )
        self.processes[name] = process
        if (proc := identify(process.pid)) is not None:
            self._seen.add(proc)
        return process

    def track(self) -> None:
        """Record the current descendants of the started processes."""
        self._seen.update(descendants([process.pid for process in self.processes.values()]))

    def running(self) -> list[Proc]:
        """The started or seen processes that still run."""
        self.track()
        for process in self.processes.values():
            # Reap exited children at once: Flower's helpers watch their parent with `kill(pid, 0)`, which a
            # zombie still passes, so an unreaped SuperNode would keep its SuperExec alive until SIGKILL.
            process.poll()
        return [proc for proc in self._seen if is_running(proc)]

    def exit_code(self, name: str) -> int | None:
        """``name``'s exit code, ``None`` while it runs."""
        return self.processes[name].poll()

    def stop(self, grace_s: float = 15.0) -> list[Proc]:
        """SIGTERM the started processes, newest first, then whatever of theirs is left; SIGKILL what still runs.

        Children get no signal of their own at first: a SuperLink or SuperNode stops its SuperExec, which stops its
        apps, and that order lets each flush its state. Whatever outlives its parent (an app in the middle of a
        task, or an orphan watching a zombie parent nobody reaps) gets its own SIGTERM; after ``grace_s`` in all,
        SIGKILL. Returns the processes that had to be killed.
        """
        self.track()
        roots = list(self.processes.values())
        for process in reversed(roots):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(process.poll() is None for process in roots) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = stop_processes(self.running, grace_s=max(deadline - time.monotonic(), 2.0))
        for process in roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
        for handle in self._logs:
            handle.close()
        return killed


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
