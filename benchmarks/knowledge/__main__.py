"""``python -m benchmarks.knowledge``: run the knowledge benchmark (resuming) and write its section of the report.

Jobs run two at a time (one torch thread each, the machine's two cores), most important first; a finished job's
``result.json`` is never recomputed, so an interrupted benchmark resumes where it stopped. The report section
covers whatever has finished and lists what has not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, code_digest, job_pool
from benchmarks.knowledge.budget import best_peers
from benchmarks.knowledge.grid import (
    EXTRA_SEEDS,
    PEERS,
    SETTINGS,
    Job,
    extra_jobs,
    federated,
    plan,
    select,
)
from benchmarks.knowledge.report import write_report
from benchmarks.knowledge.run import RESULT_FILE, codes, other_rounds, read_result, run_job
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.knowledge"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=8, help="federated rounds of every job (default: 8, as in the committed tables)"
    )
    parser.add_argument("--workers", type=int, default=2, help="jobs run at once (default: 2)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "knowledge")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="the file whose knowledge section is rewritten (default: report.md under --out; the committed tables "
        "are BENCHMARKS_KD.md's, built from runs whose folders are gone, so overwrite them only on purpose)",
    )
    parser.add_argument("--only", nargs="*", default=[], help="run only jobs whose name contains one of these")
    parser.add_argument("--budget-minutes", type=float, default=math.inf, help="start no job after this")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished jobs")
    parser.add_argument(
        "--extras", action="store_true", help="also run the rows that vary a method (grid.EXTRAS), after the plan"
    )
    parser.add_argument(
        "--required-only",
        action="store_true",
        help="plan only what issue 9 asks for: FedGEMS, the peers and the baselines (no ablation, no variants)",
    )
    parser.add_argument("--note", default="", help="a line for the report (e.g. which code the jobs ran)")
    parser.add_argument(
        "--keep-other-code",
        action="store_true",
        help="report jobs that other code finished (an earlier checkout) beside this code's jobs",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1:
        parser.error("need --rounds >= 1 and --workers >= 1")
    args.out = args.out.resolve()
    args.report = args.report or args.out / "report.md"
    if others := other_rounds(args.out, args.rounds):
        parser.error(
            f"{args.out} holds jobs of another number of rounds than --rounds {args.rounds}: "
            f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}; every job of a report runs the same "
            "rounds, so pass their --rounds or another --out"
        )
    known = _known_jobs(args.out)
    if unknown := [part for part in args.only if not any(part in job.name for job in known)]:
        parser.error(f"--only {' '.join(unknown)}: no job's name contains it (names look like alpha0.5/fedgems/seed0)")
    if args.report_only and not any(args.out.glob(f"*/*/*/{RESULT_FILE}")):
        parser.error(f"--report-only: {args.out} holds no finished job to report (check --out)")
    if not args.keep_other_code and len(ran := _codes_reported(args, known)) > 1:
        parser.error(
            f"{args.out} would join jobs of more than one code "
            f"({'; '.join(f'{code}: {_listed(jobs)}' for code, jobs in ran.items())}); a job's name and settings do "
            "not show a change of code, so its figures may not be this code's: pass another --out, or "
            "--keep-other-code to report them side by side"
        )
    return args


def _known_jobs(out: Path) -> list[Job]:
    """Every job the grid can run or report: the plan, the extras and every peer's extra seeds (no duplicate)."""
    return list(dict.fromkeys(plan(best_peers(out)) + extra_jobs() + _peer_seeds()))


def _peer_seeds() -> list[Job]:
    """Every peer's extra seeds, which the plan holds only for a setting's best peer."""
    return [federated(peer, setting, seed) for setting in SETTINGS for peer in PEERS for seed in EXTRA_SEEDS]


def _codes_reported(args: argparse.Namespace, known: Sequence[Job]) -> dict[str, list[str]]:
    """The codes whose jobs the report would join: those of ``known`` finished under --out, and, unless only
    reporting, this one."""
    ran = codes(args.out, known)
    if not args.report_only:
        ran.setdefault(code_digest(), [])
    return ran


def _listed(names: Sequence[str]) -> str:
    if not names:
        return "this checkout, no job yet"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def pending(
    out: Path, only: Sequence[str], running: set[Job], extras: bool = False, required_only: bool = False
) -> list[Job]:
    """Jobs of the current plan (and of the extras, when asked) that have neither finished nor started."""
    jobs = plan(best_peers(out), required_only) + (extra_jobs() if extras else [])
    return [job for job in select(jobs, only) if job not in running and not read_result(out, job)]


def reported_jobs(out: Path, extras: bool = False, required_only: bool = False) -> list[Job]:
    """The plan, plus every finished extra seed of a peer the plan no longer asks for, plus the extras' jobs: all
    of them when they were asked for (so the unfinished are listed), else those that have finished.

    The best peer can change as results come in (FedAvg of the server model finishing last); the seeds run for an
    earlier best peer stay in the tables. With ``required_only`` the unfinished jobs outside the issue's grid are not
    listed.
    """
    jobs = plan(best_peers(out), required_only)
    jobs += [job for job in extra_jobs() if extras or read_result(out, job)]
    earlier = [job for job in _peer_seeds() if job not in jobs and read_result(out, job)]
    return jobs + earlier


def run_all(args: argparse.Namespace) -> list[str]:
    """Run pending jobs until none is left (or the budget is spent); the failures, as lines."""
    started = time.monotonic()
    failures: list[str] = []
    failed: set[Job] = set()
    with job_pool(args.workers) as pool:
        running: dict[Future[object], Job] = {}
        while True:
            within_budget = (time.monotonic() - started) / 60 < args.budget_minutes
            queue = [
                job
                for job in pending(args.out, args.only, set(running.values()), args.extras, args.required_only)
                if job not in failed
            ]
            while within_budget and queue and len(running) < args.workers:
                job = queue.pop(0)
                print(f"[{_clock()}] start {job.name}", flush=True)
                running[pool.submit(run_job, job, args.rounds, args.out)] = job
            if not running:
                return failures
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                error = future.exception()
                if error is None:
                    print(f"[{_clock()}] done  {job.name}", flush=True)
                else:
                    failed.add(job)
                    failures.append(f"{job.name}: {type(error).__name__}: {error}")
                    print(f"[{_clock()}] FAILED {failures[-1]}", flush=True)


def _clock() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, then write the report section; exit 1 if a job failed."""
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if "--note" in given:  # the note is printed on its own line
        at = given.index("--note")
        del given[at : at + 2]
    command = f"{ENTRY} " + shlex.join(given)
    failures = [] if args.report_only else run_all(args)
    torch.set_num_threads(1)  # as every job ran; the report's machine line says so
    jobs = reported_jobs(args.out, args.extras, args.required_only)
    write_report(args.out, args.report, args.rounds, command, jobs, failures, args.note)
    print(f"report section written to {args.report}; run folders under {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
