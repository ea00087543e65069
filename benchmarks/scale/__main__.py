"""``python -m benchmarks.scale``: one Flower simulation of many virtual clients, watched; writes its section.

Defaults: Fashion-MNIST, 1,000 clients in the ``three_tier_fmnist`` tiers, 2 % of them trained per round, 2 %
evaluated on a 2,000-image test subset, 3 rounds measured. A run's last round evaluates every client on the whole
test set (``fl_kd.kd.evaluation``), a cost of all clients x test set that the sampled rounds do not pay, so by
default the run has one round more than measured and is stopped, as a Ctrl-C would stop it, once the measured rounds
have ended; ``--full-run`` runs to the end instead.

An interrupted benchmark (Ctrl-C, SIGTERM) stops every process of the run and writes no section, nor does a run that
fails; a timed-out one is stopped the same way and reports the rounds it finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import REPO_ROOT, command_line, write_section
from benchmarks.scale.report import render, save_summary
from benchmarks.scale.run import CONSOLE, run_scale
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.flower_launcher import SUPERLINK_START_FAILED
from fl_kd.simulations.processes import interrupt_exit_code, tail
from fl_kd.simulations.run import FLOWER_LOG

ENTRY = "python -m benchmarks.scale"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="virtual clients (default: 1000)")
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset config (default: fashion_mnist)")
    parser.add_argument("--device-profile", default="three_tier_fmnist", help="default: three_tier_fmnist")
    parser.add_argument("--rounds", type=int, default=3, help="rounds to measure (default: 3)")
    parser.add_argument(
        "--full-run",
        action="store_true",
        help="run exactly --rounds rounds to the end, the last evaluating every client on the whole test set "
        "(default: the run has one round more and is stopped once --rounds have ended)",
    )
    parser.add_argument("--fraction-fit", type=float, default=0.02, help="clients trained per round (default: 0.02)")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.02, help="clients evaluated per round before the last (default: 0.02)"
    )
    parser.add_argument(
        "--test-samples", type=int, default=2000, help="test images per evaluation before the last (default: 2000)"
    )
    parser.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE", help="extra fl-kd-sim overrides (Hydra)"
    )
    parser.add_argument("--timeout-minutes", type=float, default=15.0, help="stop the run after this (default: 15)")
    parser.add_argument(
        "--retries", type=int, default=2, help="new attempts if the local SuperLink fails to start (default: 2)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples (default: 0.5)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "scale")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "BENCHMARKS_KD.md")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.timeout_minutes <= 0 or args.interval <= 0:
        parser.error("need --clients >= 1, --rounds >= 1, --timeout-minutes > 0 and --interval > 0")
    return args


def overrides(args: argparse.Namespace) -> list[str]:
    """``fl-kd-sim``'s overrides for ``args`` (``--override`` last, so it wins)."""
    return [
        f"dataset={args.dataset}",
        f"device_profile={args.device_profile}",
        f"num_clients={args.clients}",
        f"strategy.fraction_fit={args.fraction_fit:g}",
        f"evaluation.fraction_clients={args.eval_fraction:g}",
        f"evaluation.test_samples={args.test_samples}",
        f"strategy.rounds={args.rounds if args.full_run else args.rounds + 1}",
        *args.override,
    ]


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run, watch, report; exit code 0 if the run did what was asked, 1 if not, 128 + signal if interrupted."""
    args = parse_args(argv)
    command = command_line(ENTRY, argv)
    stop_after = None if args.full_run else args.rounds
    for attempt in range(1 + args.retries):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = args.out / f"{args.clients}clients_{stamp}"
        try:
            result = run_scale(overrides(args), run_dir, args.timeout_minutes * 60, args.interval, stop_after)
        except KeyboardInterrupt as interrupt:
            print(f"interrupted; every process of the run was stopped; no section written; run folder: {run_dir}")
            return interrupt_exit_code(interrupt)
        save_summary(result)
        if not result.outcome.startswith("failed"):
            break
        print(tail(result.run_dir / CONSOLE, lines=15))
        print(f"fl-kd-sim failed ({result.outcome}); run folder: {result.run_dir}")
        # fl-kd-sim sends Flower's own console to the run folder's flower.log: its reason is there, not in ours.
        logs = tail(result.run_dir / CONSOLE, lines=200) + tail(result.run_dir / FLOWER_LOG, lines=200)
        if SUPERLINK_START_FAILED not in logs or attempt == args.retries:
            print("no section written")  # nothing to report: the log says why
            return 1
        print("retrying: on a loaded machine the local SuperLink may take longer than flwr's fixed 15 s to start")
    section = render(result, command, args.interval)
    write_section(args.report, section)
    print("\n" + section)
    print(f"\nsection written to {args.report}; run folder: {result.run_dir}")
    return 0 if result.finished else 1


if __name__ == "__main__":
    sys.exit(main())
