"""``python -m benchmarks.device_check``: every horizontal-FL strategy for a few rounds on one torch device.

What a user with a GPU relies on and the CPU test suite cannot show: that every registered algorithm (and the
benchmark's FedGEMS, ``fedgems_plus``) runs with ``device=cuda``, that the same seed gives the same figures twice
there (``deterministic=true`` switches torch to deterministic kernels), and how far the device's figures and
seconds are from the CPU's. Each run goes through the in-process runner, the code every Flower ClientApp and
ServerApp wraps. A run that raises is reported with its traceback and the check goes on to the next one.

    python -m benchmarks.device_check --device cuda --out DIR

``--timing-jobs alpha0.5/fedgems`` also runs jobs of the knowledge benchmark (``benchmarks.knowledge``, its
overrides and Fashion-MNIST) once on the device for ``--timing-rounds`` rounds and prints their seconds per round,
to set against the CPU's in BENCHMARKS_KD.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.kd.grid import compose_config
from fl_kd.kd.algorithm import available_strategies
from fl_kd.kd.runner import run_inprocess
from fl_kd.simulations.cli import user_errors_exit

UNLABELLED = 400
"""Unlabelled transfer samples for the algorithms that use them (the embedded digits have 1,797 images)."""

PRESETS: dict[str, tuple[str, ...]] = {
    "fedavg": ("strategy=fedavg", "device_profile=homogeneous"),
    "fedgems_plus": ("strategy=fedgems_plus",),
    "fedgems_plus+camouflage": ("strategy=fedgems_plus", "adversary=camouflage"),
    # cnn_server pools a 2x2 map onto its 3x3 grid here (7x7 on Fashion-MNIST): overlapping windows, see GridAvgPool.
    "fedgems_plus+cnn_server": ("strategy=fedgems_plus", "device_profile.server_model=cnn_server"),
    "fedgems+random_logits": ("strategy=fedgems", "adversary=random_logits"),
    "fedavg_server_model+median+scaled_update": (
        "strategy=fedavg_server_model",
        "strategy.aggregation=median",
        "adversary=scaled_update",
    ),
}
"""Runs that need more than ``strategy=<name>``: an algorithm's other settings, or malicious clients beside it."""


def strategy_overrides(name: str) -> tuple[str, ...]:
    """The Hydra overrides that select ``name`` (a registered algorithm or a preset of :data:`PRESETS`)."""
    return PRESETS.get(name, (f"strategy={name}",)) + (f"transfer.unlabelled={UNLABELLED}",)


def comparable(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The round rows without their timings (``wall_seconds``, ``sim_seconds_<tier>``, ...), which differ between
    two runs of the same seed."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def run_once(name: str, device: str, rounds: int, seed: int, extra: Sequence[str]) -> dict[str, Any]:
    """One run of ``name`` on ``device``: its round rows and seconds, or the error it raised."""
    return run_once_with([*strategy_overrides(name), *extra], device, rounds, seed)


def run_once_with(overrides: Sequence[str], device: str, rounds: int, seed: int) -> dict[str, Any]:
    """One in-process run of the default config with ``overrides`` on ``device``, or the error it raised."""
    start = time.perf_counter()
    try:
        cfg = compose_config(seed, rounds, "inprocess", [*overrides, f"device={device}"])
        rows = run_inprocess(cfg).rounds
    except Exception:  # noqa: BLE001 - the check reports every failure and goes on
        return {"error": traceback.format_exc(), "seconds": time.perf_counter() - start}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return {"rounds": [dict(row) for row in rows], "seconds": time.perf_counter() - start}


def check_strategy(name: str, device: str, rounds: int, seed: int, extra: Sequence[str]) -> dict[str, Any]:
    """Run ``name`` twice on ``device`` and once on the CPU; say whether the device's two runs agree."""
    first = run_once(name, device, rounds, seed, extra)
    second = run_once(name, device, rounds, seed, extra)
    reference = run_once(name, "cpu", rounds, seed, extra)
    result: dict[str, Any] = {"strategy": name, "device": first, "device_again": second, "cpu": reference}
    errors = [f"{label}: {run['error']}" for label, run in result.items() if isinstance(run, dict) and "error" in run]
    result["errors"] = errors
    if not errors:
        result["repeatable"] = comparable(first["rounds"]) == comparable(second["rounds"])
        finite = all(
            math.isfinite(float(v))
            for row in first["rounds"]
            for v in row.values()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        result["finite"] = finite
    return result


def final(run: dict[str, Any], key: str) -> float | None:
    """``key`` of a run's last round, if it ran and reported it."""
    rows = run.get("rounds") or []
    value = rows[-1].get(key) if rows else None
    return float(value) if isinstance(value, (int, float)) else None


def summary_line(result: dict[str, Any]) -> str:
    """One line per strategy: pass or fail, final server accuracy on device and CPU, seconds of each."""
    if result["errors"]:
        return f"{result['strategy']:<22} FAIL  " + " | ".join(e.strip().splitlines()[-1] for e in result["errors"])
    ok = result["repeatable"] and result["finite"]
    on_device, on_cpu = final(result["device"], "server_acc"), final(result["cpu"], "server_acc")
    return (
        f"{result['strategy']:<22} {'ok  ' if ok else 'FAIL'}  repeatable={result['repeatable']} "
        f"finite={result['finite']} server_acc device={on_device} cpu={on_cpu} "
        f"seconds device={result['device']['seconds']:.1f}/{result['device_again']['seconds']:.1f} "
        f"cpu={result['cpu']['seconds']:.1f}"
    )


def time_job(setting_and_method: str, device: str, rounds: int, seed: int) -> dict[str, Any]:
    """One knowledge-benchmark job (``<setting>/<method>``) on ``device``: seconds and server accuracy per round."""
    from benchmarks.knowledge.grid import base_job

    setting, method = setting_and_method.split("/")
    job = base_job(method, setting, seed)
    run = run_once_with(job.hydra_overrides(), device, rounds, seed)
    rows = run.get("rounds") or []
    run["per_round"] = [(row["round"], row.get("wall_seconds"), row.get("server_acc")) for row in rows]
    run["job"] = setting_and_method
    return run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device to check (default: cuda)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="*", help="default: every registered algorithm and every preset")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--out", type=Path, help="folder for results.json")
    parser.add_argument("--timing-jobs", nargs="*", default=[], help="knowledge-benchmark jobs, e.g. alpha0.5/fedgems")
    parser.add_argument("--timing-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device} is no torch device (cuda, cuda:<index>, cpu, ...)")
    return args


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Check every strategy; exit 1 if any failed, raised or was not repeatable."""
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    names = args.strategies or list(dict.fromkeys([*available_strategies(), *PRESETS]))
    meta: dict[str, Any] = {"torch": torch.__version__, "device": args.device, "rounds": args.rounds, "seed": args.seed}
    if torch.device(args.device).type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
    results: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    failed: list[str] = []

    def save() -> None:
        # After every run, so a check stopped by its time limit still leaves what it found.
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            record = {"meta": meta, "results": results, "timings": timings}
            (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str))

    for name in names:
        result = check_strategy(name, args.device, args.rounds, args.seed, args.override)
        results.append(result)
        if result["errors"] or not (result["repeatable"] and result["finite"]):
            failed.append(name)
        print(summary_line(result), flush=True)
        save()
    for name in args.timing_jobs:
        timing = time_job(name, args.device, args.timing_rounds, args.seed)
        timings.append(timing)
        if "error" in timing:
            failed.append(name)
            print(f"{name:<22} FAIL  {timing['error'].strip().splitlines()[-1]}", flush=True)
        else:
            print(f"{name:<22} seconds {timing['seconds']:.1f}; round, seconds, server_acc: {timing['per_round']}")
        save()
    runs = len(names) + len(timings)
    print(f"{runs - len(failed)} of {runs} runs passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
