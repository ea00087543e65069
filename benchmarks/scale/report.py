"""The scale benchmark's section of ``BENCHMARKS_KD.md``, between its own markers, from one watched run."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine_line, markdown_table
from benchmarks.scale.memory import GIB
from benchmarks.scale.run import RunResult
from fl_kd.kd.evaluation import EvaluationConfig, evaluated_clients
from fl_kd.kd.federation import sample_clients

BEGIN, END = "<!-- scale-benchmark:begin -->", "<!-- scale-benchmark:end -->"  # see benchmarks.common.kept_sections
LIMIT_GIB = 24.0
COUNTED = (
    "Counted: `fl-kd-sim` and its descendants, plus every process whose environment holds the run's `FLWR_HOME` "
    "and their descendants (the SuperLink, which `flwr run` starts in a session of its own; SuperExec; "
    "`flwr-simulation`; Ray's GCS, raylet, dashboard and helpers; the ClientApp actors), sampled from `/proc` "
    "every {interval:g} s; the benchmark's own process is not counted. RSS summed counts each shared page (torch, "
    "Ray) once per process that maps it; PSS summed counts it once in all, so it is the run's share of the machine."
)


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config ``fl-kd-sim`` wrote into the run folder (empty if it never got that far)."""
    try:
        loaded = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def round_plan(config: Mapping[str, Any], round: int) -> tuple[int, int, int, str]:
    """``(trained, evaluated, evaluate messages, test images)`` of ``round``, from the same functions the run uses."""
    num_clients, seed = int(config["num_clients"]), int(config["seed"])
    rounds = int(config["strategy"]["rounds"])
    evaluation = EvaluationConfig(**config.get("evaluation", {}))
    trained = sample_clients(num_clients, float(config["strategy"]["fraction_fit"]), seed, round)
    evaluated = evaluated_clients(num_clients, evaluation, seed, round, rounds)
    full = evaluation.test_samples == 0 or round >= rounds
    return (
        len(trained),
        len(evaluated),
        len(set(trained) | set(evaluated)),
        "all" if full else f"{evaluation.test_samples:,}",
    )


def render(result: RunResult, benchmark_command: str, interval_s: float, now: dt.datetime | None = None) -> str:
    """The section, markers included."""
    now = now or dt.datetime.now(dt.timezone.utc)
    config = run_config(result.run_dir)
    num_clients = int(config.get("num_clients", 0))
    dataset = str(config.get("dataset", {}).get("name", "?"))
    rounds = int(config.get("strategy", {}).get("rounds", 0)) or len(result.rows)
    flower = config.get("simulation", {}).get("backend", "flwr_run") == "flwr_run"
    runtime = "Flower simulation" if flower else "in-process runner"
    through = "through `flwr run`" if flower else "without Flower"
    load = " / ".join(f"{value:.2f}" for value in result.load_start)
    load_end = " / ".join(f"{value:.2f}" for value in result.load_end)
    lines = [
        BEGIN,
        f"## Scale: {num_clients:,} virtual clients on {dataset}, {runtime}",
        "",
        f"`{benchmark_command}` (written {now:%Y-%m-%d %H:%M} UTC on {machine_line()}; load average 1 / 5 / 15 min "
        f"{load} at the start, {load_end} at the end). It ran, {through}:",
        "",
        "```",
        _shown_command(result),
        "```",
        "",
        f"Outcome: **{result.outcome}**, {len(result.rows)} of {rounds} rounds in {result.wall_seconds:.0f} s."
        + (_STOPPED.format(rounds=rounds) if result.outcome.startswith("stopped after") else ""),
        "",
        markdown_table(["figure", "value"], _figure_rows(result, rounds)),
        "",
    ]
    if result.rows and config:
        lines += ["Per round (clients and test images from the run's config, through the functions the run uses):", ""]
        lines += [markdown_table(_ROUND_HEADER, [_round_row(result, config, row) for row in result.rows]), ""]
    if result.peak_rss.processes:
        lines += [f"At the RSS peak ({result.peak_rss.seconds:.0f} s after the start), by process:", ""]
        rows = [
            [name, str(count), f"{rss / GIB:.2f}", f"{pss / GIB:.2f}"]
            for name, count, rss, pss in result.peak_rss.by_name()
        ]
        lines += [markdown_table(["process", "count", "RSS GiB", "PSS GiB"], rows), ""]
    lines += [
        "- " + COUNTED.format(interval=interval_s),
        f"- Ray processes that appeared during the run outside that count (another user's Ray, or one the test "
        f"missed): at most {result.stray_ray_peak} at a time"
        + (
            f" ({', '.join(f'`{name}`' for name in sorted(result.stray_ray_names))})."
            if result.stray_ray_names
            else "."
        ),
        f"- Processes of the run still running once `fl-kd-sim` had ended: {result.left_running}"
        + (" (stopped by the benchmark)." if result.left_running else "."),
        END,
    ]
    return "\n".join(lines)


_STOPPED = (
    " The run has {rounds} rounds and was stopped (SIGTERM to `fl-kd-sim`, as a Ctrl-C would) once the measured "
    "ones had ended: its last round evaluates every client on the whole test set (`fl_kd.kd.evaluation`), a cost of "
    "all clients x test set paid once per run, which these figures leave out (`--full-run` includes it)."
)

_ROUND_HEADER = [
    "round",
    "clients trained",
    "clients evaluated",
    "evaluate messages",
    "test images",
    "seconds",
    "done at s",
    "peak tree RSS by then, GiB",
]


def _round_row(result: RunResult, config: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    round = int(row["round"])
    trained, evaluated, messages, images = round_plan(config, round)
    seen = result.round_seen.get(round)
    peak = result.round_peak_rss.get(round)
    return [
        str(round),
        f"{trained:,}",
        f"{evaluated:,}",
        f"{messages:,}",
        images,
        f"{float(row['wall_seconds']):.1f}",
        f"{seen:.0f}" if seen is not None else "-",
        f"{peak / GIB:.2f}" if peak is not None else "-",
    ]


def _figure_rows(result: RunResult, rounds: int) -> list[list[str]]:
    peak = result.peak_rss
    fits = "fits in" if peak.rss <= LIMIT_GIB * GIB else "does NOT fit in"
    rows = [
        [
            "peak memory of the whole process tree, RSS summed",
            f"**{peak.rss / GIB:.2f} GiB** ({fits} {LIMIT_GIB:g} GiB; {_processes(len(peak.processes))}, "
            f"{peak.seconds:.0f} s after the start)",
        ],
        ["peak memory of the whole process tree, PSS summed", f"{result.peak_pss.pss / GIB:.2f} GiB"],
        [
            "machine memory in use (everyone's)",
            f"{result.machine_in_use_start / GIB:.1f} GiB at the start, "
            f"peak {result.machine_in_use_peak / GIB:.1f} GiB (of {result.machine_total / GIB:.1f} GiB)",
        ],
        ["processes of the run at most", str(result.peak_processes)],
    ]
    seconds = {int(row["round"]): float(row["wall_seconds"]) for row in result.rows}
    if 1 in seconds and 1 in result.round_seen:
        rows.append(["start-up: command start to round 1's start", f"{result.round_seen[1] - seconds[1]:.1f} s"])
    sampled = [seconds[r] for r in sorted(seconds) if r < rounds]
    if sampled:
        rows.append(
            [
                "seconds per round, rounds before the last (sampled clients)",
                f"**{sum(sampled) / len(sampled):.1f} s** mean ({min(sampled):.1f}-{max(sampled):.1f})",
            ]
        )
    if rounds in seconds:
        rows.append(["last round (every client evaluated on the whole test set)", f"{seconds[rounds]:.1f} s"])
        if rounds in result.round_seen and result.finished:
            rows.append(
                [
                    "after the last round to the command's end",
                    f"{result.wall_seconds - result.round_seen[rounds]:.1f} s",
                ]
            )
    if result.outcome != "finished":
        rows.append(["stopping the run: SIGTERM until every process had ended", f"{result.stop_seconds:.1f} s"])
    rows.append(["wall, whole command", f"{result.wall_seconds:.1f} s"])
    return rows


def _processes(count: int) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def _shown_command(result: RunResult) -> str:
    """``fl-kd-sim``'s command line, with the run folder as ``RUN`` and the script by its name."""
    words = list(result.command)
    words = ["fl-kd-sim", *words[1:]] if words and Path(words[0]).name == "fl-kd-sim" else words
    return " ".join("hydra.run.dir=RUN" if word.startswith("hydra.run.dir=") else word for word in words)


def summary(result: RunResult) -> dict[str, Any]:
    """The figures of ``result`` as JSON-ready values (saved as ``result.json`` in the run folder)."""
    return {
        "command": result.command,
        "outcome": result.outcome,
        "exit_code": result.exit_code,
        "wall_seconds": result.wall_seconds,
        "round_seen": result.round_seen,
        "round_peak_rss": result.round_peak_rss,
        "peak_rss_bytes": result.peak_rss.rss,
        "peak_rss_seconds": result.peak_rss.seconds,
        "peak_rss_by_process": result.peak_rss.by_name(),
        "peak_pss_bytes": result.peak_pss.pss,
        "peak_processes": result.peak_processes,
        "samples": result.samples,
        "machine_total_bytes": result.machine_total,
        "machine_in_use_start_bytes": result.machine_in_use_start,
        "machine_in_use_peak_bytes": result.machine_in_use_peak,
        "load_start": result.load_start,
        "load_end": result.load_end,
        "stray_ray_peak": result.stray_ray_peak,
        "stray_ray_names": sorted(result.stray_ray_names),
        "left_running": result.left_running,
        "stop_seconds": result.stop_seconds,
        "rows": result.rows,
    }


def save_summary(result: RunResult) -> Path:
    """Write :func:`summary` to ``result.json`` in the run folder."""
    path = result.run_dir / "result.json"
    path.write_text(json.dumps(summary(result), indent=2, default=str))
    return path
