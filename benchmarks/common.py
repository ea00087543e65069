"""What every benchmark report shares: where the numbers came from, mean ± std over seeds, markdown tables."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fl_kd.simulations.processes import exit_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What a benchmark job runs: the package (core, server and client sides, configs, entry points) and the benchmarks.
CODE_FOLDERS = ("fl_kd", "strategies", "clients", "conf", "simulations", "benchmarks")
#: Folders under those that hold no code: caches, and the benchmarks' default run folders.
_NOT_CODE = frozenset({"__pycache__", "results"})


def code_digest(root: Path = REPO_ROOT, folders: Sequence[str] = CODE_FOLDERS) -> str:
    """A short digest of every ``.py`` and ``.yaml`` file under ``folders`` of ``root``: the code a job ran.

    Kept with each job's result, it lets a resumed benchmark tell the jobs that other code finished (an edit since,
    a default that changed) from this code's, which the job's name and overrides cannot.
    """
    paths = []
    for folder in folders:
        for directory, subdirectories, files in os.walk(root / folder):  # symlinks are not followed
            subdirectories[:] = [d for d in subdirectories if d not in _NOT_CODE and not d.startswith(".")]
            paths += [Path(directory) / name for name in files if name.endswith((".py", ".yaml"))]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def job_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` worker processes that run one benchmark job each, from a fresh interpreter (``spawn``: no state
    or thread carried over from the benchmark's own process), and end with the benchmark: on Linux a benchmark
    killed by any signal leaves no worker computing on, or writing into the folder a restarted run resumes."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        max_tasks_per_child=1,
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )


def code_line(records: Iterable[Mapping[str, Any]]) -> str | None:
    """Which code (:func:`code_digest`) ran the finished jobs' ``records``, as a report line; None when none says."""
    counts = Counter(str(record.get("code", "not recorded")) for record in records)
    if not counts or set(counts) == {"not recorded"}:
        return None
    jobs = ", ".join(f"{code} ({count} job{'s' if count > 1 else ''})" for code, count in counts.most_common())
    return f"Code of the jobs (digest of the package and the benchmarks): {jobs}."


def distinct_seeds(seeds: Sequence[int]) -> str | None:
    """Why ``--seeds`` cannot be run, or None: a seed given twice would run one job twice (two workers writing one
    folder) and count as two seeds in the report's mean and spread."""
    repeated = sorted(seed for seed, count in Counter(seeds).items() if count > 1)
    return f"--seeds must be distinct, got {list(seeds)} ({repeated} twice)" if repeated else None


def machine_info() -> dict[str, str]:
    """CPU, core count, platform and library versions of this machine."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import flwr

        flwr_version = flwr.__version__
    except ImportError:  # pragma: no cover - flwr is a dependency
        flwr_version = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr_version,
        "torch threads per process": str(torch.get_num_threads()),
    }


def command_line(entry: str, argv: Sequence[str] | None) -> str:
    """How the benchmark was invoked, for its report: ``entry`` and its arguments (``sys.argv`` when None)."""
    return f"{entry} {shlex.join(sys.argv[1:] if argv is None else list(argv))}".rstrip()


def run_stamp() -> str:
    """A folder name for this invocation's run folders: the UTC time, to the second."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")


def machine_line() -> str:
    """:func:`machine_info` as one line for a report header."""
    info = machine_info()
    return (
        f"{info['nproc']} CPUs (nproc), {info['cpu']}, {info['platform']}, Python {info['python']}, "
        f"torch {info['torch']}, flwr {info['flwr']} ({info['torch threads per process']} torch thread)"
    )


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (nan for no values)."""
    return math.fsum(values) / len(values) if values else float("nan")


def std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """:func:`mean` and :func:`std` of at least one value."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    return mean(values), std(values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; every row must have as many cells as the header."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def kept_sections(text: str) -> list[str]:
    """Blocks ``<!-- name:begin --> ... <!-- name:end -->`` of a report that another command writes.

    A benchmark that regenerates a whole report file appends these unchanged, so one report can hold the
    sections of several benchmarks (and hand-measured ones) without either command erasing the others'.
    """
    sections = []
    for match in re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", text, flags=re.DOTALL):
        sections.append(match.group(0))
    return sections


def write_section(report: Path, section: str) -> None:
    """Replace the marked block ``section`` (``<!-- name:begin --> ... <!-- name:end -->``) in ``report``, or append it.

    Each benchmark owns one block of a shared report file, so rerunning one command never touches another's figures.
    """
    match = re.match(r"<!-- ([\w-]+):begin -->", section)
    if match is None or not section.rstrip().endswith(f"<!-- {match.group(1)}:end -->"):
        raise ValueError("a section starts with <!-- name:begin --> and ends with <!-- name:end -->")
    begin, end = match.group(0), f"<!-- {match.group(1)}:end -->"
    text = report.read_text() if report.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip() + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip() + "\n"
    report.write_text(text)
