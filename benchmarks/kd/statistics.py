"""What each seed of the KD benchmark produced, and numbers over seeds: final values, ``mean ± std``, runtimes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import mean, std

Row = dict[str, Any]

#: Each runtime and baseline of a seed, by the name its rows are kept under, with its label in the report.
RUNTIMES = {
    "flower": "Flower simulation",
    "inprocess": "in-process runner",
    "local_only": "local-only",
    "server_only": "transfer-only server",
}

#: Keys that measure the machine, not the algorithm: left out when the two runtimes are compared.
TIMING_KEYS = frozenset({"wall_seconds"})


@dataclass
class SeedRun:
    """Everything one seed produced.

    Attributes
    ----------
    seed : int
        The run's seed.
    flower, inprocess, local_only, server_only : list[dict]
        Per-round metric rows of each runtime and baseline (``flower`` is empty with ``--skip-flower``).
    total_seconds : dict[str, float]
        Wall-clock seconds of each whole run, start-up (Ray, data loading, model building) included.
    tiers : dict[int, str]
        Client id -> tier name.
    tier_models : dict[str, str]
        Tier name -> model name, in the order of the device profile.
    weight_nbytes : dict[int, int]
        Client id -> float32 parameter bytes of its model.
    num_selected : list[int]
        Clients sampled in each round.
    """

    seed: int
    flower: list[Row] = field(default_factory=list)
    inprocess: list[Row] = field(default_factory=list)
    local_only: list[Row] = field(default_factory=list)
    server_only: list[Row] = field(default_factory=list)
    total_seconds: dict[str, float] = field(default_factory=dict)
    tiers: dict[int, str] = field(default_factory=dict)
    tier_models: dict[str, str] = field(default_factory=dict)
    weight_nbytes: dict[int, int] = field(default_factory=dict)
    num_selected: list[int] = field(default_factory=list)


def pm(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` over seeds as text."""
    return f"{mean(values):.{digits}f} ± {std(values):.{digits}f}"


def tier_names(runs: Sequence[SeedRun]) -> list[str]:
    """Tier names in the order of the device profile."""
    return list(runs[0].tier_models)


def kd_rows(run: SeedRun) -> list[dict[str, Any]]:
    """The distillation run's rows: Flower's (the supported path) when it ran, else the in-process runner's."""
    return run.flower or run.inprocess


def final(runs: Sequence[SeedRun], key: str, which: str) -> list[float]:
    """``key`` of the last round, one value per seed, from ``which`` ("kd" or "local_only")."""
    if which not in ("kd", "local_only"):
        raise ValueError(f"which must be 'kd' or 'local_only', got {which!r}")
    values = []
    for run in runs:
        rows = kd_rows(run) if which == "kd" else run.local_only
        if rows and rows[-1].get(key) is not None:
            values.append(float(rows[-1][key]))
    return values


def compare_runtimes(runs: Sequence[SeedRun]) -> tuple[bool, list[str]]:
    """Whether Flower and in-process rows agree exactly on every non-timing metric; and what differs if not."""
    differences = []
    for run in runs:
        if len(run.flower) != len(run.inprocess):
            differences.append(f"seed {run.seed}: {len(run.flower)} Flower rounds vs {len(run.inprocess)} in-process")
            continue
        for flower_row, inprocess_row in zip(run.flower, run.inprocess, strict=True):
            keys = (set(flower_row) | set(inprocess_row)) - TIMING_KEYS
            for key in sorted(keys):
                if flower_row.get(key) != inprocess_row.get(key):
                    differences.append(
                        f"seed {run.seed} round {inprocess_row.get('round')}: {key} "
                        f"Flower {flower_row.get(key)!r} vs in-process {inprocess_row.get(key)!r}"
                    )
    return not differences, differences
