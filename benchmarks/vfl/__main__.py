"""``python -m benchmarks.vfl``: train every (setting, defence, seed), score the attacks, write the report.

It writes ``records.jsonl`` (one line per training), ``summary.json`` and ``vfl_tradeoff.png`` under ``--out`` and
a markdown report: ``BENCHMARKS.md`` at the repo root (and the plots in ``docs/img``) for the whole grid, else under
``--out`` unless ``--report`` says where, so a run of some datasets never replaces the committed one. The grid may be
split across processes sharing ``--out`` (e.g. ``--datasets fashion_mnist --resume`` in one, the binary datasets
in another); a last ``--resume`` invocation over all datasets then only renders the report from ``records.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, distinct_seeds, kept_sections
from benchmarks.vfl.grid import (
    AUTOENCODER_DEFENCES,
    DEFAULT_NOISE_SCALES,
    DEFENCE_NAMES,
    FULL_SETTINGS,
    DefenceSpec,
    Setting,
    applies,
    defence_grid,
    quick_settings,
)
from benchmarks.vfl.plot import plot_pareto, plot_tradeoff
from benchmarks.vfl.records import RECORDS_NAME, append_record, load_records, run_start
from benchmarks.vfl.report import ENTRY, RunInfo, render_report
from benchmarks.vfl.run import (
    attacker_alone,
    autoencoder_epochs,
    load_setting_data,
    prepare_autoencoder,
    reusable,
    run_one,
)
from benchmarks.vfl.statistics import summarise
from fl_kd.simulations.cli import user_errors_exit

REPORT_NAME = "BENCHMARKS.md"
PLOT_NAME = "vfl_tradeoff.png"
PARETO_NAME = "vfl_pareto.png"
COMMITTED_PLOT = REPO_ROOT / "docs" / "img" / PLOT_NAME
COMMITTED_PARETO = REPO_ROOT / "docs" / "img" / PARETO_NAME


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description="Vertical-FL label-protection benchmark.")
    datasets = sorted({s.dataset for s in FULL_SETTINGS})
    parser.add_argument("--datasets", nargs="+", default=datasets, choices=datasets)
    parser.add_argument("--tops", nargs="+", default=["sum", "mlp"], choices=["sum", "mlp"])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCE_NAMES), choices=list(DEFENCE_NAMES))
    parser.add_argument("--noise-scales", nargs="+", type=float, default=list(DEFAULT_NOISE_SCALES))
    parser.add_argument("--exclude", nargs="*", default=[], metavar="DATASET/TOP", help="settings to leave out")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (0 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny data, <= 2 epochs, 2-epoch autoencoders, seed 0")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/vfl[_quick])")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="report path (default: BENCHMARKS.md for the whole grid, else under --out, so a part never replaces it)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse finished trainings in <out>/records.jsonl")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument(
        "--shared-autoencoder-for",
        nargs="*",
        type=int,
        default=[],
        metavar="C",
        help="class counts for which one CoAE autoencoder (first seed) serves every seed, to save time",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if problem := distinct_seeds(args.seeds):
        parser.error(problem)
    return args


def whole_grid(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for the committed grid (every dataset, top, defence, noise scale and seed, not --quick):
    only such a run replaces BENCHMARKS.md's generated part and the plots in docs/img by default."""
    defaults = vars(parse_args([]))
    asked = ("datasets", "tops", "defences", "noise_scales", "exclude", "seeds")
    return not args.quick and all(sorted(getattr(args, k)) == sorted(defaults[k]) for k in asked)


def report_location(args: argparse.Namespace, out: Path) -> Path:
    """``--report``, else BENCHMARKS.md at the repo root for the whole grid and ``<out>/BENCHMARKS.md`` for a part."""
    return (args.report or (REPO_ROOT / REPORT_NAME if whole_grid(args) else out / REPORT_NAME)).resolve()


def plan(args: argparse.Namespace) -> tuple[list[Setting], list[int]]:
    """The settings and seeds to run; a quick run shrinks the settings and, by default, keeps seed 0 only."""
    unknown = sorted(set(args.exclude) - {s.key for s in FULL_SETTINGS})
    if unknown:
        raise SystemExit(f"unknown settings {unknown} in --exclude; known: {[s.key for s in FULL_SETTINGS]}")
    settings = [
        s for s in FULL_SETTINGS if s.dataset in args.datasets and s.top in args.tops and s.key not in args.exclude
    ]
    seeds = list(args.seeds)
    if args.quick:
        settings = quick_settings(settings)
    if not settings:
        raise SystemExit("no setting left: check --datasets and --tops")
    return settings, seeds


def run_setting(
    setting: Setting,
    data: Any,
    specs: Sequence[DefenceSpec],
    args: argparse.Namespace,
    info: RunInfo,
    done: dict[tuple[str, str, int], dict[str, Any]],
    records_path: Path,
    progress: Callable[[str, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Every (defence, seed) of one setting, read back from ``done`` where an earlier run finished it."""
    out = records_path.parent
    num_classes = int(data.num_classes)
    ae_epochs = autoencoder_epochs(num_classes, args.quick)
    shared = num_classes in args.shared_autoencoder_for
    autoencoders = {}
    specs = [spec for spec in specs if applies(spec, setting, num_classes)]
    if any(spec.name in AUTOENCODER_DEFENCES for spec in specs):
        for seed in info.seeds[:1] if shared else info.seeds:
            autoencoders[seed], check = prepare_autoencoder(out, num_classes, seed, ae_epochs)
            if not any(c["num_classes"] == num_classes and c["seed"] == seed for c in info.ae_checks):
                info.ae_checks.append({**check, "shared": shared})
                print(
                    f"CoAE C={num_classes} seed={seed}: acc p {check['acc_p']:.4f}, acc n {check['acc_n']:.4f}, "
                    f"{check['seconds']:.0f} s",
                    flush=True,
                )
    first = info.seeds[0]
    pair = (first, autoencoders[first]) if shared and autoencoders else None
    records = []
    for spec in specs:
        for seed in info.seeds:
            key = (setting.key, spec.label, seed)
            if key in done and reusable(done[key], spec, seed, pair[0] if pair else None, ae_epochs):
                record = done[key]
            else:
                record = run_one(setting, spec, seed, data, out, ae_epochs, pair)
                append_record(records_path, record)
            records.append(record)
            progress(f"{setting.key} {spec.label} seed {seed}", record)
    return records


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run the planned trainings (or read them back with ``--resume``), then write plot, report and summary."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--resume"]
    settings, seeds = plan(args)
    out = (args.out or REPO_ROOT / "benchmarks" / "results" / ("vfl_quick" if args.quick else "vfl")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start_unix, started = run_start(out, fresh=not args.resume)
    specs = defence_grid(args.defences, args.noise_scales)
    # Through JSON, so that tuples compare equal to the lists read back from records.jsonl.
    planned = {s.key: json.loads(json.dumps(asdict(s))) for s in settings}
    records_path = out / RECORDS_NAME
    done = load_records(records_path, lambda r: planned.get(r["setting"]) == r["setting_params"]) if args.resume else {}
    if not args.resume and records_path.exists():
        records_path.unlink()

    command = f"{ENTRY} " + shlex.join(given)
    info = RunInfo(command=command, started=started, settings=settings, seeds=seeds, defences=specs, quick=args.quick)
    info.excluded = list(args.exclude)
    records: list[dict[str, Any]] = []
    data_cache: dict[str, Any] = {}
    for setting in settings:
        if setting.dataset not in data_cache:
            data_cache[setting.dataset], info.dataset_info[setting.dataset] = load_setting_data(setting)
    # Model completion on the attacker's raw columns, per seed: the floor no defence can push it below (seconds).
    for setting in settings:
        info.attacker_alone[setting.key] = [
            attacker_alone(setting, seed, data_cache[setting.dataset]) for seed in seeds
        ]
    wall_start = time.perf_counter()
    # Only the defences that apply to a setting (Marvell: binary tasks; randomised labels: the sum top) are trained.
    total = len(seeds) * sum(
        applies(spec, s, int(data_cache[s.dataset].num_classes)) for s in settings for spec in specs
    )
    count = itertools.count(1)

    def progress(what: str, record: dict[str, Any]) -> None:
        aps = ", ".join(f"{a} {v['ap_adaptive']:.3f}" for a, v in record["attacks"].items())
        minutes = (time.perf_counter() - wall_start) / 60
        print(
            f"[{next(count)}/{total}] {what}: MP {record['mp']:.4f}; {aps} "
            f"({record['seconds']:.1f} s, {minutes:.1f} min)",
            flush=True,
        )

    for setting in settings:
        records += run_setting(setting, data_cache[setting.dataset], specs, args, info, done, records_path, progress)

    summary = summarise(records)
    info.train_seconds = sum(r["seconds"] for r in records)
    reused = {id(record) for record in done.values()}
    info.resumed = sum(id(record) in reused for record in records)
    # Up to the last finished training (the file's last append), so re-rendering a report does not add time.
    info.wall_seconds = records_path.stat().st_mtime - start_unix
    plot_path = out / PLOT_NAME
    plot_tradeoff(summary, plot_path)
    pareto_path = out / PARETO_NAME
    plot_pareto(summary, pareto_path)
    report_path = report_location(args, out)
    if not whole_grid(args):
        linked, linked_pareto = plot_path, pareto_path
    else:
        COMMITTED_PLOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot_path, COMMITTED_PLOT)
        shutil.copyfile(pareto_path, COMMITTED_PARETO)
        linked, linked_pareto = COMMITTED_PLOT, COMMITTED_PARETO
    links = (os.path.relpath(linked, report_path.parent), os.path.relpath(linked_pareto, report_path.parent))
    # Sections other commands write into the same file (``benchmarks.vfl.speed``) survive a new report.
    kept = kept_sections(report_path.read_text()) if report_path.exists() else []
    report_path.write_text("\n\n".join([render_report(summary, info, *links).rstrip("\n"), *kept]) + "\n")
    (out / "summary.json").write_text(json.dumps({"info": asdict(info), "summary": summary}, indent=1, default=str))
    print(f"report: {report_path}; plot: {plot_path}; records: {records_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
