"""``python -m benchmarks.robustness``: malicious clients against every strategy and fusion rule, resuming.

Jobs run ``--workers`` at a time (one torch thread each); a finished job's ``result.json`` is never recomputed, so an
interrupted benchmark resumes where it stopped, and ``--budget-minutes`` starts no job past the budget. The
markdown table covers whatever has finished.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from benchmarks.common import REPO_ROOT, code_digest, code_line, distinct_seeds, job_pool, machine_line, write_section
from benchmarks.robustness.grid import FRACTIONS, METHODS, Job, attack_names, plan
from benchmarks.robustness.report import section
from benchmarks.robustness.run import conflicts, other_code, read_result, run_job
from fl_kd.kd.adversary import ADVERSARIES
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.robustness"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--adversaries", nargs="+", default=list(ADVERSARIES.names()), choices=attack_names())
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-minutes", type=float, default=math.inf, help="start no job after this")
    parser.add_argument("--quick", action="store_true", help="digits, 6 clients, tiny models: an end-to-end check")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "robustness")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also rewrite this file's robustness section, e.g. BENCHMARKS_KD.md, whose table joins many runs: "
        "overwrite it only on purpose (report.md under --out is always written)",
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing: rewrite the report from --out")
    parser.add_argument("--note", default="", help="a paragraph under the command line (cuts, load)")
    parser.add_argument(
        "--keep-other-code",
        action="store_true",
        help="count jobs that other code finished as done (not rerun), and report them beside this code's",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1 or not all(0 < f <= 1 for f in args.fractions):
        parser.error("need --rounds >= 1, --workers >= 1 and fractions in (0, 1]")
    if problem := distinct_seeds(args.seeds):
        parser.error(problem)
    return args


def printed_command(argv: Sequence[str]) -> str:
    """The command that reproduces the runs: without ``--report-only`` and ``--note`` (which change no number)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--report-only":
            skip = False
            continue
        if arg == "--note" or arg.startswith("--note="):
            skip = arg == "--note"
            continue
        kept.append(arg)
    return f"{ENTRY} {shlex.join(kept)}"


def run_pending(todo: list[Job], args: argparse.Namespace, out: Path) -> list[str]:
    """Run ``todo`` ``--workers`` at a time until done or out of budget; the names of the jobs that failed."""
    started, failures = time.monotonic(), []
    with job_pool(args.workers) as pool:
        running: dict[Future[object], str] = {}
        while todo or running:
            while todo and len(running) < args.workers and (time.monotonic() - started) / 60 < args.budget_minutes:
                job = todo.pop(0)
                running[pool.submit(run_job, job, args.rounds, out, args.quick)] = job.name
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                error = future.exception()
                print(f"{'FAILED' if error else 'done'} {name}" + (f": {error}" if error else ""), flush=True)
                if error:
                    failures.append(f"{name}: {error}")
    return failures


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run the pending jobs, then write ``report.md`` under ``--out`` and, when given, the section of ``--report``;
    exit 1 if a job failed, 2 if ``--out`` holds finished jobs of another run."""
    args = parse_args(argv)
    out = args.out.resolve()
    jobs = plan(args.methods, args.adversaries, args.fractions, args.seeds)
    if not args.report_only and (others := conflicts(out, jobs, args.rounds, args.quick)):
        print(
            f"error: {out} holds finished jobs of another run, which this one would overwrite: "
            f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}; pass their --rounds (and --quick), or "
            "another --out",
            file=sys.stderr,
        )
        return 2
    if not args.report_only and not args.keep_other_code and (others := other_code(out, jobs, code_digest())):
        print(
            f"error: {out} holds jobs finished by other code than this checkout's ({code_digest()}): "
            f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}; their figures may not be this code's: "
            "pass another --out, or --keep-other-code to count them as done",
            file=sys.stderr,
        )
        return 2
    finished = [r for job in jobs if (r := read_result(out, job, args.rounds, args.quick)) is not None]
    if args.report_only and not args.keep_other_code and len({r.get("code") for r in finished}) > 1:
        print(
            f"error: {out} holds jobs finished by more than one code ({code_line(finished)}); a report of them "
            "would mix figures of different code: pass --keep-other-code to report them side by side",
            file=sys.stderr,
        )
        return 2
    todo = [job for job in jobs if read_result(out, job, args.rounds, args.quick) is None]
    failures = [] if args.report_only else run_pending(todo, args, out)
    records = [r for job in jobs if (r := read_result(out, job, args.rounds, args.quick)) is not None]
    command = printed_command(sys.argv[1:] if argv is None else list(argv))
    missing = [job.name for job in jobs if read_result(out, job, args.rounds, args.quick) is None]
    header = (
        f"`{command}` ({len(records)} of {len(jobs)} jobs finished, {args.rounds} rounds, seeds {args.seeds}; "
        f"{sum(r['seconds'] for r in records) / 60:.0f} CPU-minutes of jobs, {args.workers} at a time with one torch "
        f"thread each; {machine_line()})"
    )
    text = section(records, header, "\n\n".join(filter(None, [code_line(records), args.note])), missing, failures)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    if args.report is not None:
        write_section(args.report, text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
