"""``python -m benchmarks.kd``: run the KD benchmark for some seeds and write its report.

Run folders go under ``--out`` (ignored by git); the markdown report goes to ``BENCHMARKS_KD.md`` at the repo root
(with ``--skip-flower``, to ``<out>/BENCHMARKS_KD.md`` unless ``--report`` says otherwise, so a quick run does not
overwrite the committed results).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import REPO_ROOT, distinct_seeds, kept_sections
from benchmarks.kd.grid import compose_config
from benchmarks.kd.report import render_report
from benchmarks.kd.run import run_seed
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.kd"
REPORT_NAME = "BENCHMARKS_KD.md"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; seeds must be distinct and rounds at least one."""
    parser = argparse.ArgumentParser(
        prog=ENTRY, description="Selective-KD benchmark: Flower, in-process runner and baselines, side by side."
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default: 0 1 2)")
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kd"), help="folder for run folders")
    parser.add_argument("--skip-flower", action="store_true", help="skip the Flower simulation (quick run)")
    parser.add_argument(
        "--report", type=Path, default=None, help=f"markdown report path (default: {REPORT_NAME} at the repo root)"
    )
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra overrides, e.g. strategy.server_lr=0.1",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or not args.seeds:
        parser.error("need --rounds >= 1 and at least one seed")
    if problem := distinct_seeds(args.seeds):
        parser.error(problem)
    return args


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run every seed, then write the report and ``results.json``."""
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    command = f"{ENTRY} " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    cfg = compose_config(args.seeds[0], args.rounds, "inprocess", args.override)  # a bad override fails here, early
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(seed, args.rounds, out, args.override, args.skip_flower) for seed in args.seeds]
    report, results = render_report(runs, cfg, command, started, ENTRY)
    report_path = args.report or (out / REPORT_NAME if args.skip_flower else REPO_ROOT / REPORT_NAME)
    previous = report_path.read_text() if report_path.exists() else ""
    report_path.write_text("\n\n".join([report.rstrip("\n"), *kept_sections(previous)]) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    print("\n" + report)
    print(f"report: {report_path}; run folders and results.json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
