"""`fl-kd-table`: turn the run folders of a Hydra multirun sweep into one table (``sweep.md``) and one figure.

Each job folder of ``fl-kd-sim --multirun ...`` holds ``.hydra/overrides.yaml`` and ``config.yaml``, and then either
``summary.json`` and ``metrics.jsonl`` (it finished) or ``failed.json`` (it failed; see
:mod:`fl_kd.simulations.jobs`). Jobs are grouped by every overridden key except ``seed``; per group the table gives
the mean ± standard deviation over seeds of the final and best server accuracy and the final client accuracy
(global and personalised test set), the mean per round of what a client sends and receives, the simulated seconds
and a client's training FLOPs, and the wall time. Failed and unfinished jobs are listed below the table.
``sweep.png`` plots accuracy over rounds and against cumulative uplink bytes, simulated seconds and client FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from fl_kd.kd.metrics import server_trend
from fl_kd.models.profiles import DeviceProfile, tier_counts
from fl_kd.plots import _format_bytes, save_figure
from fl_kd.results import SUMMARY_JSON, read_metrics
from fl_kd.simulations.jobs import FAILED_FILE
from fl_kd.simulations.report import MODEL_REPORT
from fl_kd.sweep_plots import CLIENT_FLOPS, SWEEP_PNG, sweep_overview_figure
from fl_kd.vfl.protocol import RESULTS_FILE as VFL_RESULTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SWEEP_MD = "sweep.md"
FINISHED, FAILED, UNFINISHED, UNREADABLE = "finished", "failed", "did not finish", "unreadable"
EARLIER = "an earlier sweep's"
#: The setting of jobs that differ in nothing but the seed.
ALL_JOBS = "(all jobs)"


@dataclass
class Job:
    """One job folder of a sweep."""

    name: str
    overrides: list[str]
    seed: str
    status: str
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    setting: str = ""


def collect(sweep_dir: Path) -> list[Job]:
    """Every job folder under ``sweep_dir`` (those with ``.hydra/overrides.yaml``), in job order, with its status,
    summary and per-round rows; ``setting`` names what the job's overrides differ in, seed left out."""
    jobs = [_job(path.parent.parent, sweep_dir) for path in sweep_dir.rglob(".hydra/overrides.yaml")]
    jobs.sort(key=lambda job: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", job.name)])
    _mark_earlier(jobs, sweep_dir)
    shared = set(shared_overrides(counted(jobs)))
    for job in jobs:
        job.setting = " ".join(o for o in job.overrides if o not in shared) or ALL_JOBS
    return jobs


def _mark_earlier(jobs: Sequence[Job], sweep_dir: Path) -> None:
    """Mark the jobs an earlier sweep into the same folder left and the last one did not run again.

    Hydra writes a sweep folder's ``multirun.yaml`` when the sweep starts, with the sweep's overrides: a job whose
    own overrides are none of their combinations is no job of the last sweep (a sweep of fewer seeds, say), and its
    figures, of other code or settings, would join the table's rows unseen. Where ``multirun.yaml`` names no
    overrides, a job folder older than it is taken as an earlier sweep's (Hydra writes each job's ``.hydra/`` when
    the job starts). Each job is checked against its own sweep's file, the nearest one above it, so a folder that
    holds several sweeps (Hydra's ``multirun/<date>``) is checked sweep by sweep.
    """
    launched_by_sweep: dict[Path, tuple[set[frozenset[str]] | None, int]] = {}
    for job in jobs:
        if job.status == UNREADABLE:
            continue
        folder = sweep_dir / job.name
        launched = _sweep_file(folder, sweep_dir)
        if launched is None:
            continue
        if launched not in launched_by_sweep:
            launched_by_sweep[launched] = (_launched_jobs(launched), launched.stat().st_mtime_ns)
        expected, started = launched_by_sweep[launched]
        if expected is not None:  # what the last sweep launched, read from the file: a copy without times keeps it
            if frozenset(_overrides(folder)) not in expected:
                job.status, job.error = EARLIER, "not among the jobs of the sweep's multirun.yaml"
        elif (folder / ".hydra" / "overrides.yaml").stat().st_mtime_ns < started:
            job.status, job.error = EARLIER, "older than the sweep's multirun.yaml: not run by the last sweep"


def _sweep_file(folder: Path, sweep_dir: Path) -> Path | None:
    """The ``multirun.yaml`` of the sweep that ran the job in ``folder``: the nearest above it, up to
    ``sweep_dir``."""
    for parent in folder.parents:
        if (parent / "multirun.yaml").is_file():
            return parent / "multirun.yaml"
        if parent == sweep_dir:
            return None
    return None


def _launched_jobs(launched: Path) -> set[frozenset[str]] | None:
    """The overrides of every job the sweep of ``launched`` (its ``multirun.yaml``) ran, as Hydra's basic sweeper
    expands them; None where the file does not say (then file times tell the jobs apart)."""
    try:
        hydra_node = (yaml.safe_load(launched.read_text()) or {}).get("hydra") or {}
        task = (hydra_node.get("overrides") or {}).get("task")
        if not isinstance(task, list):
            return None
        parsed = OverridesParser.create().parse_overrides([str(line) for line in task])
        (launched_jobs,) = BasicSweeper.split_arguments(parsed, None)  # Hydra's own expansion, job by job
    except (OSError, AttributeError, TypeError, ValueError, yaml.YAMLError, HydraException):
        return None
    return {frozenset(overrides) for overrides in launched_jobs}


def counted(jobs: Sequence[Job]) -> list[Job]:
    """The jobs whose settings the table and the figure describe: not an earlier sweep's, and readable."""
    return [job for job in jobs if job.status not in (UNREADABLE, EARLIER)]


def shared_overrides(jobs: Sequence[Job]) -> list[str]:
    """The overrides (seed left out) every job has, in the first job's order."""
    if not jobs:
        return []
    common = set.intersection(*(set(job.overrides) for job in jobs))
    return [o for o in jobs[0].overrides if o in common]


def _job(folder: Path, sweep_dir: Path) -> Job:
    """One job folder; a file in it that cannot be read makes the job ``unreadable``, never the whole sweep."""
    name = str(folder.relative_to(sweep_dir))
    try:
        return _read_job(folder, name)
    except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError) as err:
        try:  # an unreadable result stays in its own setting's row ("1 of 2"), not in a row of its own
            overrides = _overrides(folder)
        except (OSError, ValueError, TypeError, yaml.YAMLError):
            overrides = []
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "?")
        kept = [o for o in overrides if not o.startswith("seed=")]
        return Job(name, kept, seed, UNREADABLE, f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")


def _overrides(folder: Path) -> list[str]:
    """A job's overrides as Hydra wrote them (``.hydra/overrides.yaml``), the seed's included."""
    loaded = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    if not isinstance(loaded, list):  # a string would be read character by character
        raise ValueError(".hydra/overrides.yaml holds no list of overrides")
    return [str(o) for o in loaded]


def _read_job(folder: Path, name: str) -> Job:
    overrides = _overrides(folder)
    config = _read_yaml(folder / "config.yaml")
    seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), str(config.get("seed", "?")))
    if (folder / VFL_RESULTS).is_file() and not (folder / SUMMARY_JSON).is_file():
        raise ValueError(f"{VFL_RESULTS} is an fl-kd-vfl run's: fl-kd-table reads fl-kd-sim sweeps")
    if (folder / MODEL_REPORT).is_file() and not (folder / SUMMARY_JSON).is_file():
        raise ValueError("an fl-kd-report folder (reports, no run): fl-kd-table reads fl-kd-sim sweeps")
    kept = [o for o in overrides if not o.startswith("seed=")]
    job = Job(name, kept, seed, UNFINISHED, "no summary.json and no failed.json (stopped, or still running)")
    if (folder / FAILED_FILE).is_file():  # first: a summary beside it is an earlier attempt's
        failure = json.loads((folder / FAILED_FILE).read_text())
        first = (str(failure.get("message", "")).strip().splitlines() or [""])[0]
        job.status, job.error = FAILED, f"{failure.get('error_type', 'error')}: {first}"
    elif (folder / SUMMARY_JSON).is_file():
        job.summary = json.loads((folder / SUMMARY_JSON).read_text())
        if not isinstance(job.summary, dict):
            raise ValueError(f"{SUMMARY_JSON} holds no JSON object")
        weights = tier_weights(config)
        job.rounds = [derived_row(row, weights) for row in read_metrics(folder)]
        for _, read, _ in COLUMNS:  # a figure that is no number makes this job unreadable, not the whole table
            read(job)
        job.status, job.error = FINISHED, ""
    return job


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def tier_weights(config: Mapping[str, Any]) -> dict[str, int]:
    """Clients per device tier of a run's ``config.yaml`` ({} when it names no usable profile: equal weights)."""
    try:
        profile = DeviceProfile.from_dict(config["device_profile"])
        return tier_counts(profile, int(config["num_clients"]))
    except (KeyError, TypeError, ValueError):
        return {}


def per_client(row: Mapping[str, Any], prefix: str, weights: Mapping[str, int]) -> float:
    """Mean over the tiers in ``row`` of ``<prefix>_<tier>`` (itself a mean over the tier's sampled clients),
    weighted by the tier's clients; NaN when the row has none (a null figure, JSON's NaN, counts as none)."""
    values = {
        key[len(prefix) + 1 :]: float(v) for key, v in row.items() if key.startswith(prefix + "_") and v is not None
    }
    total = sum(weights.get(tier, 1) if weights else 1 for tier in values)
    if not values or total == 0:
        return math.nan
    return math.fsum(v * (weights.get(tier, 1) if weights else 1) for tier, v in values.items()) / total


def derived_row(row: Mapping[str, Any], weights: Mapping[str, int]) -> dict[str, Any]:
    """A metrics row plus what a client does per round: ``client_flops``, ``client_uplink_bytes`` and
    ``client_downlink_bytes`` (means over tiers weighted by clients)."""
    return {
        **row,
        CLIENT_FLOPS: per_client(row, "client_flops", weights),
        "client_uplink_bytes": per_client(row, "client_uplink_bytes", weights),
        "client_downlink_bytes": per_client(row, "client_downlink_bytes", weights),
    }


# ----------------------------------------------------------------------------------------------------------- table


def _mean_over_rounds(key: str) -> Callable[[Job], float]:
    def figure(job: Job) -> float:
        values = [float(row[key]) for row in job.rounds if row.get(key) is not None and math.isfinite(row[key])]
        return statistics.fmean(values) if values else math.nan

    return figure


def _summary(key: str, fallback: Callable[[Job], float]) -> Callable[[Job], float]:
    def figure(job: Job) -> float:
        value = job.summary.get(key)
        return float(value) if value is not None else fallback(job)

    return figure


def _last(key: str) -> Callable[[Job], float]:
    """The last round's ``key``; NaN where it is missing or null (JSON's NaN)."""

    def figure(job: Job) -> float:
        value = job.rounds[-1].get(key) if job.rounds else None
        return math.nan if value is None else float(value)

    return figure


def _best_server(job: Job) -> float:
    finite = [acc for acc in server_trend(job.rounds) if math.isfinite(acc)]
    return max(finite) if finite else math.nan


def _accuracy(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _seconds(mean: float, std: float | None) -> str:
    return f"{mean:.3g} s" if std is None else f"{mean:.3g} ± {std:.2g} s"


def _flops(mean: float, _std: float | None) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if mean >= scale:
            return f"{mean / scale:.3g} {unit}"
    return f"{mean:.3g} FLOP"


#: Column header, per-job figure, and cell format of mean (and std over seeds, None for a single seed).
COLUMNS: tuple[tuple[str, Callable[[Job], float], Callable[[float, float | None], str]], ...] = (
    ("server acc, final", _summary("final_server_acc", _last("server_acc")), _accuracy),
    ("server acc, best", _summary("best_server_acc", _best_server), _accuracy),
    ("client acc, final", _summary("final_client_acc_mean", _last("client_acc_mean")), _accuracy),
    ("client acc (own test set), final", _summary("final_client_pacc_mean", _last("client_pacc_mean")), _accuracy),
    ("up / client / round", _mean_over_rounds("client_uplink_bytes"), lambda m, _s: _format_bytes(m)),
    ("down / client / round", _mean_over_rounds("client_downlink_bytes"), lambda m, _s: _format_bytes(m)),
    ("sim. s / round", _mean_over_rounds("sim_seconds"), lambda m, _s: _seconds(m, None)),
    ("client FLOPs / round", _mean_over_rounds(CLIENT_FLOPS), _flops),
    ("wall s", _summary("wall_seconds", lambda job: math.nan), _seconds),
)

NOTES = (
    "Mean ± standard deviation over seeds. Up/down: bytes one sampled client sends/receives per round; client "
    "FLOPs: its training FLOPs per round (means over rounds and device tiers, tiers weighted by their clients). "
    "Sim. s: simulated seconds of a round (its slowest sampled client, from the tiers' compute speed and "
    "bandwidth). Wall s: the run's rounds on this machine."
)


def cell(values: Sequence[float], fmt: Callable[[float, float | None], str]) -> str:
    """Mean (± std for several finite values) of one column in one group; "–" when none is finite, and how many
    seeds it is over when some have no figure (a seed with no client evaluated in its last round)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    text = fmt(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None)
    return text if len(finite) == len(values) else f"{text} ({len(finite)} of {len(values)})"


def _markdown(text: str) -> str:
    """``text`` as one cell of a markdown row (a ``|`` in an override would split it)."""
    return text.replace("|", "\\|")


def one_per_seed(jobs: Sequence[Job]) -> tuple[list[Job], list[str]]:
    """The first finished job of each seed, and the seeds that finished more than once (``"0 (2 jobs)"``).

    Two jobs of one setting and seed are one measurement run twice (the same config and seed give the same
    numbers), so counting both would shrink the spread over seeds; the first in job order stands for the seed.
    """
    first: dict[str, Job] = {}
    runs: dict[str, int] = {}
    for job in jobs:
        if job.status == FINISHED:
            first.setdefault(job.seed, job)
            runs[job.seed] = runs.get(job.seed, 0) + 1
    return list(first.values()), [f"{seed} ({count} jobs)" for seed, count in runs.items() if count > 1]


def groups_of(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    """Jobs by setting, in the order the sweep first ran each setting."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.setting, []).append(job)
    return groups


def table(jobs: Sequence[Job]) -> str:
    """Markdown: the shared overrides, one row per setting (finished seeds), then the jobs without results."""
    shared = " ".join(shared_overrides(counted(jobs)))
    lines = [
        f"All jobs: `{shared or '(defaults)'}`",
        "",
        "| setting | seeds | " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for setting, members in groups_of([job for job in jobs if job.status != EARLIER]).items():
        done, repeated = one_per_seed(members)
        asked = len({job.seed for job in members if job.seed != "?"}) + sum(job.seed == "?" for job in members)
        seeds = str(len(done)) if len(done) == asked else f"{len(done)} of {asked}"
        if repeated:
            seeds += f"; seed {', '.join(repeated)}, the first kept"
        cells = [cell([figure(job) for job in done], fmt) for _, figure, fmt in COLUMNS]
        lines.append(f"| {_markdown(setting)} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", NOTES]
    missing = [job for job in jobs if job.status != FINISHED]
    if missing:
        lines += ["", f"Jobs without results ({len(missing)} of {len(jobs)}):", ""]
        lines += ["| job | setting | seed | status | error |", "|---|---|---|---|---|"]
        for job in missing:
            texts = (job.name, job.setting, job.seed, job.status, job.error)
            lines.append("| " + " | ".join(_markdown(text) for text in texts) + " |")
    return "\n".join(lines) + "\n"


def plot(jobs: Sequence[Job], path: Path) -> None:
    """``sweep.png``: accuracy over rounds and against cumulative uplink, simulated seconds and client FLOPs."""
    save_figure(figure(jobs), path)


def figure(jobs: Sequence[Job]) -> Figure:
    """The sweep figure of collected jobs (finished ones; the others are counted in the title), before saving."""
    groups = {setting: [job.rounds for job in one_per_seed(members)[0]] for setting, members in groups_of(jobs).items()}
    missing = sum(job.status != FINISHED for job in jobs)
    shared = " ".join(shared_overrides(counted(jobs)))  # as the table's header says them
    return sweep_overview_figure({s: runs for s, runs in groups.items() if runs}, shared=shared, missing=missing)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``fl-kd-table multirun/2026-11-27/12-00-00``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="folder of a Hydra multirun sweep")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is no folder (give the folder of a multirun sweep)")
    jobs = collect(args.sweep_dir)
    if not jobs:
        parser.error(f"no job folders (.hydra/overrides.yaml) under {args.sweep_dir}")
    markdown = table(jobs)
    (args.sweep_dir / SWEEP_MD).write_text(markdown)
    print(markdown)
    if any(job.status == FINISHED for job in jobs):
        plot(jobs, args.sweep_dir / SWEEP_PNG)
        print(f"wrote {args.sweep_dir / SWEEP_MD} and {args.sweep_dir / SWEEP_PNG}")
    else:
        print(f"wrote {args.sweep_dir / SWEEP_MD} (no job finished: no plot)")


if __name__ == "__main__":
    main()
