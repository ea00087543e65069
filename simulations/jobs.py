"""Jobs of an ``fl-kd-sim`` or ``fl-kd-vfl --multirun`` sweep: a failed job is recorded in its folder and the sweep
goes on.

What Hydra 1.3 does by itself (``hydra/core/utils.py`` ``run_job``, ``hydra/_internal/core_plugins/``): the
basic launcher runs the jobs one after another and ``run_job`` catches an ``Exception`` of a job, so the remaining
jobs of the batch still run; then the basic sweeper reads every job's return value and re-raises the first failure
as a traceback with exit code 1. A ``SystemExit``, however, is no ``Exception``: ``sys.exit(2)`` of
:func:`~fl_kd.simulations.cli.user_errors_exit` (a bad value in one job) would end the whole sweep at once.

Here :func:`sweep_job` first removes an earlier run's outcome from the folder (in a single run too). A single run
that fails leaves ``failed.json`` in its folder and then fails as it would without it. In a multirun it catches
whatever a job raises, except
``KeyboardInterrupt`` (Ctrl-C still stops the sweep): the job's folder gets ``failed.json`` (error, overrides,
traceback), the console one line, and Hydra a normal return, so the next job starts. After each job, whatever
is left of its Flower run is stopped once more (:func:`~fl_kd.simulations.flower_launcher.stop_leftovers`, also
called by the launcher itself) and garbage is collected, so no job starts beside the last one's processes and the
command's memory stays flat from job to job.
When the sweep is over, :func:`finish_sweep` prints one line and, if any job failed, ends the command with
exit code 1 (:data:`EXIT_JOB_FAILED`): the sweep as a whole did not do what was asked, but every other job's
results are in place for ``fl-kd-table``, which lists the failed jobs.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from fl_kd.results import SERVER_ERROR_JSON, SUMMARY_JSON
from fl_kd.simulations.cli import USER_ERRORS
from fl_kd.simulations.flower_launcher import stop_leftovers
from fl_kd.simulations.processes import interrupt_exit_code
from fl_kd.vfl.protocol import RESULTS_FILE as VFL_RESULTS

log = logging.getLogger(__name__)

FAILED_FILE = "failed.json"
EXIT_JOB_FAILED = 1

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class JobFailure:
    """What ``failed.json`` holds about one failed job."""

    job: int
    overrides: list[str]
    error_type: str
    message: str
    user_error: bool
    traceback: str = ""

    def line(self, out_dir: Path) -> str:
        """The one console line of the failure."""
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return (
            f"job #{self.job} ({' '.join(self.overrides) or 'no overrides'}) failed: {self.error_type}: {first} "
            f"[{out_dir / FAILED_FILE}]"
        )


@dataclass
class SweepReport:
    """Jobs of this process's multirun so far (empty in a single run)."""

    finished: list[int] = field(default_factory=list)
    failed: list[JobFailure] = field(default_factory=list)


REPORT = SweepReport()


def in_multirun() -> bool:
    """Whether the Hydra job running now is part of a ``--multirun`` sweep."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def failure_of(error: BaseException, job: int, overrides: list[str]) -> JobFailure:
    """The record of ``error``; a ``SystemExit`` keeps its code as the message."""
    if isinstance(error, SystemExit):
        message = f"exit code {error.code}" if isinstance(error.code, int) else str(error.code)
    else:
        message = str(error)
    return JobFailure(
        job=job,
        overrides=overrides,
        error_type=type(error).__name__,
        message=message,
        user_error=isinstance(error, USER_ERRORS),
        traceback="".join(traceback.format_exception(error)),
    )


def record_failure(out_dir: Path, failure: JobFailure) -> Path:
    """Write ``failed.json`` into the job's folder; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FAILED_FILE
    path.write_text(json.dumps(asdict(failure), indent=2) + "\n")
    return path


def resident_mb() -> float:
    """This process's resident memory in MB (NaN where ``/proc`` is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def sweep_job(task: F) -> F:
    """Decorate a Hydra task function (below ``@user_errors_exit``) so that, in a multirun, a failing job is
    recorded in its folder and reported in one line instead of ending the sweep."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hydra_cfg = HydraConfig.get()
        out_dir = Path(hydra_cfg.runtime.output_dir)
        # Hydra has just rewritten .hydra/ for this job: an earlier run's outcome in the same folder is no longer
        # the outcome of the settings written there (fl-kd-table would show it under them), whether or not this
        # run gets as far as writing its own.
        for stale in (FAILED_FILE, SUMMARY_JSON, SERVER_ERROR_JSON, VFL_RESULTS):
            (out_dir / stale).unlink(missing_ok=True)
        job = int(hydra_cfg.job.num) if in_multirun() else 0
        overrides = [str(o) for o in hydra_cfg.overrides.task]
        if not in_multirun():
            try:
                return task(*args, **kwargs)
            except (Exception, SystemExit) as error:
                # The error itself ends the command as it would without this (one line for a user's mistake); the
                # folder keeps what happened, so fl-kd-table shows a refused run as failed, not as still running.
                if not (isinstance(error, SystemExit) and error.code in (0, None)):
                    record_failure(out_dir, failure_of(error, job, overrides))
                raise
        start = time.perf_counter()
        try:
            result = task(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as error:
            if isinstance(error, SystemExit) and error.code in (0, None):
                REPORT.finished.append(job)
                return None
            failure = failure_of(error, job, overrides)
            record_failure(out_dir, failure)
            REPORT.failed.append(failure)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                print(failure.traceback, file=sys.stderr, end="", flush=True)
            print(failure.line(out_dir), file=sys.stderr, flush=True)
            return None
        finally:
            stop_leftovers(out_dir / ".flwr")
            gc.collect()
            log.info(
                "job #%d ended after %.0f s; fl-kd-sim resident memory %.0f MB",
                job,
                time.perf_counter() - start,
                resident_mb(),
            )
        REPORT.finished.append(job)
        return result

    return wrapper  # type: ignore[return-value]


def finish_sweep(report: SweepReport = REPORT) -> None:
    """After a multirun: one line on how it went; exit code 1 if any job failed. Nothing after a single run."""
    total = len(report.finished) + len(report.failed)
    if total == 0:
        return
    if not report.failed:
        print(f"sweep: all {total} jobs finished", flush=True)
        return
    jobs = ", ".join(f"#{failure.job}" for failure in report.failed)
    print(
        f"sweep: {len(report.failed)} of {total} jobs failed ({jobs}), {len(report.finished)} finished; "
        f"each failed job's folder has {FAILED_FILE}",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(EXIT_JOB_FAILED)


def run_command(task: Callable[[], Any]) -> None:
    """An ``fl-kd-*`` command: its Hydra task (one run, or every job of a sweep), then :func:`finish_sweep`.

    A run interrupted in a sweep has printed its one line and let the ``KeyboardInterrupt`` go on, so that the sweep
    stops; here it ends the command with the shell's code (130 for Ctrl-C), not a traceback through Hydra's launcher.
    """
    try:
        task()
    except KeyboardInterrupt as interrupt:
        sys.exit(interrupt_exit_code(interrupt))
    finish_sweep()
