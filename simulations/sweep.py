"""`fl-kd-table`: turn the run folders of a Hydra multirun sweep into one table and one plot.

Each job folder of ``fl-kd-sim --multirun ...`` holds ``.hydra/overrides.yaml``, ``summary.json`` and
``metrics.jsonl``. This collects them, groups jobs that differ only in ``seed``, and writes ``sweep.md`` (mean and
standard deviation of the final figures) and ``sweep.png`` (server and mean client accuracy over rounds per group).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fl_kd.plots import save_figure, sweep_figure
from fl_kd.results import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURES = ("final_server_acc", "final_client_acc_mean", "final_client_pacc_mean", "total_uplink_bytes")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per finished job: its overrides (without seed), seed, summary and per-round metrics."""
    jobs = []
    for summary_path in sorted(sweep_dir.rglob("summary.json")):
        job_dir = summary_path.parent
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
        jobs.append(
            {
                "overrides": [o for o in overrides if not o.startswith("seed=")],
                "seed": seed,
                "summary": json.loads(summary_path.read_text()),
                "rounds": read_metrics(job_dir),
            }
        )
    # Name each job by what varies across the sweep; what all jobs share goes in the table's caption.
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if jobs else set()
    for job in jobs:
        job["setting"] = " ".join(sorted(set(job["overrides"]) - shared)) or "(defaults)"
        job["shared"] = " ".join(sorted(shared))
    return jobs


def table(jobs: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per setting, mean ± std over seeds of the final figures."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[job["setting"]].append(job)
    shared = jobs[0]["shared"] if jobs else ""
    lines = [
        f"All jobs: `{shared or '(defaults)'}`",
        "",
        "| setting | seeds | " + " | ".join(FIGURES) + " |",
        "|---|---|" + "---|" * len(FIGURES),
    ]
    for setting, members in sorted(groups.items()):
        cells = []
        for figure in FIGURES:
            values = [float(m["summary"][figure]) for m in members if figure in m["summary"]]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}")
        lines.append(f"| {setting} | {len(members)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(jobs: Sequence[dict[str, Any]], path: Path) -> None:
    """``sweep.png``: server and mean client accuracy over rounds, mean over seeds, one line per setting."""
    save_figure(sweep_figure_of(jobs), path)


def sweep_figure_of(jobs: Sequence[dict[str, Any]]) -> Figure:
    """The sweep figure of collected jobs, before it is saved (for tests and notebooks)."""
    groups: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for job in jobs:
        groups[job["setting"]].append(job["rounds"])
    return sweep_figure(groups, shared=jobs[0]["shared"] if jobs else "")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``fl-kd-table multirun/2026-11-27/12-00-00``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="folder of a Hydra multirun sweep")
    args = parser.parse_args(argv)
    jobs = collect(args.sweep_dir)
    if not jobs:
        raise SystemExit(f"no finished runs (summary.json) under {args.sweep_dir}")
    markdown = table(jobs)
    (args.sweep_dir / "sweep.md").write_text(markdown)
    plot(jobs, args.sweep_dir / "sweep.png")
    print(markdown)
    print(f"wrote {args.sweep_dir / 'sweep.md'} and {args.sweep_dir / 'sweep.png'}")


if __name__ == "__main__":
    main()
