"""Memory of every process of one run, sampled from Linux's ``/proc``.

A run's processes are not one tree: ``flwr run`` starts the local SuperLink in a session of its own, and Ray's
daemons (GCS, raylet, dashboard, log monitor) and workers may be re-parented when their starter exits. So a
process counts (:class:`RunProcesses`) if it descends from the command the benchmark started, or if its environment
names the run's ``FLWR_HOME`` (every Flower and Ray process of an ``fl-kd-sim`` run inherits it: the same test
``fl_kd.simulations.flower_launcher.stop_leftovers`` stops them by), or descends from such a process.

RSS summed over processes counts each shared page (the torch and Ray libraries every process maps) once per
process, so it overstates what the run takes from the machine; PSS (``/proc/<pid>/smaps_rollup``) splits each
shared page between the processes that map it, so its sum is the run's share. Both are recorded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fl_kd.simulations.processes import PROC, Proc, descendants, find_processes, identify, is_running

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
GIB = 1024**3

#: Command-line words of Ray's processes, to notice Ray processes that appear during a run outside its count.
RAY_MARKERS = (b"raylet", b"gcs_server", b"ray::", b"/ray/", b"ray/_private", b"ray/dashboard")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (``None`` if it is gone or unreadable)."""
    try:
        resident = int((PROC / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * PAGE_BYTES


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of ``pid`` (its private pages plus its share of the shared ones), or ``None``."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def command_name(pid: int) -> str:
    """What a process runs, for a per-kind breakdown: ``raylet``, ``flwr-simulation``, ``ray::ClientAppActor``, ..."""
    try:
        argv = [arg for arg in (PROC / str(pid) / "cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return "?"
    if not argv:
        return "?"
    words = [arg.decode(errors="replace") for arg in argv]
    first = words[0].split()[0] if words[0].split() else words[0]  # Ray's process titles are padded with spaces
    if first.startswith("ray::"):
        return first.split(".")[0]
    name = Path(first).name
    if name.startswith("python"):
        for flag, value in zip(words[1:], [*words[2:], ""], strict=True):
            if flag == "-c":
                return "python -c"
            if flag == "-m":
                return value
            if not flag.startswith("-"):  # the script, after interpreter flags such as -u or -B
                return Path(flag).name
    return name


@dataclass(frozen=True)
class ProcessMemory:
    """One process at one sample."""

    pid: int
    name: str
    rss: int
    pss: int | None


@dataclass
class Snapshot:
    """Every counted process at one moment, ``seconds`` after the run started."""

    seconds: float
    processes: list[ProcessMemory] = field(default_factory=list)

    @property
    def rss(self) -> int:
        """RSS summed over the processes (shared pages counted once per process)."""
        return sum(proc.rss for proc in self.processes)

    @property
    def pss(self) -> int:
        """PSS summed over the processes whose PSS could be read (shared pages counted once in all)."""
        return sum(proc.pss for proc in self.processes if proc.pss is not None)

    def by_name(self) -> list[tuple[str, int, int, int]]:
        """``(name, processes, rss, pss)`` per command name, largest RSS first."""
        groups: dict[str, list[ProcessMemory]] = {}
        for proc in self.processes:
            groups.setdefault(proc.name, []).append(proc)
        rows = [
            (name, len(procs), sum(p.rss for p in procs), sum(p.pss or 0 for p in procs))
            for name, procs in groups.items()
        ]
        return sorted(rows, key=lambda row: (-row[2], row[0]))


def measure(procs: Iterable[Proc], seconds: float, with_pss: bool = True) -> Snapshot:
    """Memory of the processes in ``procs`` that still run (one that ends meanwhile is left out)."""
    snapshot = Snapshot(seconds)
    for proc in procs:
        rss = rss_bytes(proc.pid)
        if rss is None or not is_running(proc):
            continue
        pss = pss_bytes(proc.pid) if with_pss else None
        snapshot.processes.append(ProcessMemory(proc.pid, command_name(proc.pid), rss, pss))
    return snapshot


class RunProcesses:
    """The processes of one run: ``root``'s tree, and every process whose environment holds ``env_entry``.

    Parameters
    ----------
    root : int
        PID of the command the benchmark started.
    env_entry : str | None (default: None)
        An environment entry such as ``"FLWR_HOME=/abs/run/.flwr"``; matched with its terminating NUL, so that
        ``/run/1`` does not match ``/run/10``.
    """

    def __init__(self, root: int, env_entry: str | None = None) -> None:
        self.root = identify(root)
        self.env_entry = env_entry
        self.seen: set[Proc] = set()

    def find(self) -> list[Proc]:
        """The run's processes running now; each is also remembered in :attr:`seen`, to be stopped at the end."""
        found: list[Proc] = []
        if self.root is not None and is_running(self.root):
            found.append(self.root)
        roots = [self.root.pid] if self.root is not None else []
        if self.env_entry is not None:
            by_env = find_processes(self.env_entry + "\0", where=("environ",))
            found += by_env
            roots += [proc.pid for proc in by_env]
        found += descendants(roots)
        running = [proc for proc in dict.fromkeys(found) if is_running(proc)]
        self.seen.update(running)
        return running

    def still_running(self) -> list[Proc]:
        """Every process ever found that still runs, and whatever the run has now."""
        return list(dict.fromkeys([*self.find(), *(proc for proc in self.seen if is_running(proc))]))


def ray_processes(exclude: Sequence[Proc] | set[Proc] = ()) -> list[Proc]:
    """Running Ray processes (by their command line) not in ``exclude``."""
    skip = set(exclude)
    found = []
    for entry in _proc_entries():
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(marker in raw for marker in RAY_MARKERS):
            proc = identify(int(entry.name))
            if proc is not None and proc not in skip and is_running(proc):
                found.append(proc)
    return found


def machine_memory() -> tuple[int, int]:
    """``(total, in use)`` bytes of this machine's memory (in use = MemTotal - MemAvailable)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.split():
                values[key] = int(rest.split()[0]) * 1024
    total = values.get("MemTotal", 0)
    return total, total - values.get("MemAvailable", total)


def _proc_entries() -> list[Path]:
    with contextlib.suppress(OSError):
        return [entry for entry in PROC.iterdir() if entry.name.isdigit()]
    return []
