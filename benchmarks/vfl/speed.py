"""``python -m benchmarks.vfl.speed``: seconds per epoch of split training through Flower against in-process.

Runs the same ``fl-kd-vfl`` job (by default the issue's ``dataset=fashion_mnist training.epochs=1 'attack=[]'``)
with ``simulation.backend=inprocess`` and then ``simulation.backend=flwr_run``, back to back, ``--repeats`` times, each
as its own ``fl-kd-vfl`` process as a user would run it, and writes the seconds per epoch of each, their ratio and
whether both gave the same MP and losses into its own section of ``BENCHMARKS.md`` (between the markers below, so
``python -m benchmarks.vfl`` keeps it). Seconds per epoch are the runs' own ``epoch_seconds``: Flower's start-up
(SuperLink, Ray) is not in them. The 1-minute load average before each run goes into the table, since other work on
the machine slows both backends, and not by the same factor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO_ROOT, command_line, machine_line, markdown_table, run_stamp, write_section
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.flower_launcher import FLOWER_ENV, SUPERLINK_START_FAILED

ENTRY = "python -m benchmarks.vfl.speed"
BEGIN, END = "<!-- vfl-speed:begin -->", "<!-- vfl-speed:end -->"  # see benchmarks.common.kept_sections
ISSUE_OVERRIDES = ["dataset=fashion_mnist", "training.epochs=1", "attack=[]"]
BACKENDS = ("inprocess", "flwr_run")
GOAL = 2.0
"""The most Flower's seconds per epoch may be, as a multiple of in-process (issue 11)."""


@dataclass
class Run:
    """One ``fl-kd-vfl`` run: its backend, seconds per epoch, what it trained to, and the load before it."""

    backend: str
    epoch_seconds: list[float]
    mp: float
    train_loss: list[float]
    exchanges: int | None
    load_before: float
    run_dir: Path

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall seconds of the run's epochs."""
        return statistics.fmean(self.epoch_seconds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="in-process and Flower runs, in pairs (default: 3)")
    parser.add_argument(
        "--override",
        nargs="*",
        default=ISSUE_OVERRIDES,
        metavar="KEY=VALUE",
        help=f"fl-kd-vfl overrides of both backends (default: {' '.join(ISSUE_OVERRIDES)})",
    )
    parser.add_argument("--retries", type=int, default=2, help="new attempts if the local SuperLink fails to start")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "vfl-speed", help="run folders")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("need --repeats >= 1")
    return args


def run_once(backend: str, overrides: Sequence[str], run_dir: Path, retries: int) -> Run:
    """One ``fl-kd-vfl`` run with ``backend``; a local SuperLink that fails to start is given ``retries`` more tries."""
    command = [sys.executable, "-m", "fl_kd.simulations.vfl", *overrides, f"simulation.backend={backend}"]
    for attempt in range(1 + retries):
        attempt_dir = run_dir if attempt == 0 else run_dir.with_name(f"{run_dir.name}-retry{attempt}")
        load_before = os.getloadavg()[0]
        done = subprocess.run(
            [*command, f"hydra.run.dir={attempt_dir}"],
            env={**os.environ, **FLOWER_ENV},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        results_path = attempt_dir / "results.json"
        if done.returncode == 0 and results_path.exists():
            results = json.loads(results_path.read_text())
            return Run(
                backend,
                [float(s) for s in results["epoch_seconds"]],
                float(results["mp"]),
                [float(loss) for loss in results["train_loss"]],
                results.get("exchanges"),
                load_before,
                attempt_dir,
            )
        log = attempt_dir / "vfl.log"  # where fl-kd-vfl sends Flower's console
        output = done.stdout + done.stderr + (log.read_text(errors="replace") if log.exists() else "")
        if SUPERLINK_START_FAILED not in output or attempt == retries:
            raise RuntimeError(f"{shlex.join(command)} failed (exit {done.returncode}):\n{output[-3000:]}")
        print(f"{backend}: the local SuperLink did not start in flwr's 15 s; trying again", flush=True)
    raise AssertionError("unreachable")


def _same_training(pair: Mapping[str, Run]) -> bool:
    """Whether both backends of a pair gave the same MP and the same loss every epoch."""
    inprocess, flower = pair["inprocess"], pair["flwr_run"]
    return flower.mp == inprocess.mp and flower.train_loss == inprocess.train_loss


def render(pairs: Sequence[Mapping[str, Run]], command: str, overrides: Sequence[str], when: str) -> str:
    """The section: one row per pair of runs, the median ratio against the goal, the command and the machine."""
    rows, ratios = [], []
    for index, pair in enumerate(pairs, start=1):
        inprocess, flower = pair["inprocess"], pair["flwr_run"]
        ratio = flower.seconds_per_epoch / inprocess.seconds_per_epoch
        ratios.append(ratio)
        same = _same_training(pair)
        per_exchange = ""
        if flower.exchanges:
            extra = sum(flower.epoch_seconds) - sum(inprocess.epoch_seconds)
            per_exchange = f"{1000 * extra / flower.exchanges:.1f}"
        rows.append(
            [
                str(index),
                f"{inprocess.seconds_per_epoch:.2f}",
                f"{flower.seconds_per_epoch:.2f}",
                f"{ratio:.2f}",
                per_exchange,
                "yes" if same else "**no**",
                f"{inprocess.load_before:.1f} / {flower.load_before:.1f}",
            ]
        )
    median = statistics.median(ratios)
    verdict = "meets" if median <= GOAL else "misses"
    job = f"fl-kd-vfl {shlex.join(list(overrides))}"
    return "\n".join(
        [
            BEGIN,
            "## Speed: split training through Flower against in-process",
            "",
            f"`{job}` with `simulation.backend=inprocess`, then with `simulation.backend=flwr_run` (the Flower "
            "simulation through `flwr run`), back to back, each pair repeated; seconds per epoch are the runs' own "
            "(Flower's start-up excluded). Extra ms per exchange: Flower's extra seconds over all the run's "
            "exchanges of messages (two per mini-batch, plus setup and evaluation). Load: the 1-minute load "
            "average before the in-process / Flower run.",
            "",
            markdown_table(
                [
                    "pair",
                    "in-process s/epoch",
                    "Flower s/epoch",
                    "Flower / in-process",
                    "extra ms per exchange",
                    "same MP and losses",
                    "load",
                ],
                rows,
            ),
            "",
            f"Median ratio **{median:.2f}x**: {verdict} the goal of at most {GOAL:g}x.",
            "",
            f"Command: `{command}` ({when}). Machine: {machine_line()}; both backends run one torch thread "
            "per process.",
            END,
            "",
        ]
    )


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run the pairs, write the section; exit code 0 when every pair agreed on MP and losses, 1 otherwise."""
    args = parse_args(argv)
    command = command_line(ENTRY, argv)
    stamp = run_stamp()
    pairs: list[dict[str, Run]] = []
    for repeat in range(args.repeats):
        pair = {}
        for backend in BACKENDS:
            run_dir = args.out / stamp / f"{repeat}-{backend}"
            pair[backend] = run = run_once(backend, args.override, run_dir, args.retries)
            print(f"pair {repeat + 1}, {backend}: {run.seconds_per_epoch:.2f} s per epoch, MP {run.mp:.4f}", flush=True)
        pairs.append(pair)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = render(pairs, command, args.override, when)
    write_section(args.report, section)
    print("\n" + section)
    print(f"section written to {args.report}; run folders under {args.out / stamp}")
    return 0 if all(_same_training(pair) for pair in pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
