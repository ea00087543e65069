"""``python -m benchmarks.vfl.probe``: one setting, a few defence parameters, the worst gradient attack and MP loss.

For trying a defence's parameters before adding them to the benchmark's grid: it trains each given defence (and
``none``, for the MP loss) on one setting of :data:`~benchmarks.vfl.grid.FULL_SETTINGS` with the benchmark's own
attack suite, prints a line per training and a table, and writes nothing but its autoencoder cache under
``--out``. Example, per-row clipping before Gaussian noise on Fashion-MNIST halves::

    python -m benchmarks.vfl.probe --setting fashion_mnist/sum --seeds 0 1 2 \\
        --defence gaussian scale=0.003 clip_norm=0.001 --defence gaussian scale=0.01
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, mean_std
from benchmarks.vfl.grid import FULL_SETTINGS, GRADIENT_ATTACKS, DefenceSpec, Setting
from benchmarks.vfl.run import autoencoder_epochs, load_setting_data, run_one

ENTRY = "python -m benchmarks.vfl.probe"


def parse_spec(words: Sequence[str]) -> DefenceSpec:
    """``["gaussian", "scale=0.003", "clip_norm=0.001"]`` -> the spec; values are read as numbers where they are."""
    if not words:
        raise ValueError("--defence needs a name")
    params: list[tuple[str, Any]] = []
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"defence parameter {word!r} is not KEY=VALUE")
        try:
            number: Any = float(value)
        except ValueError:
            number = value
        params.append((key, number))
    return DefenceSpec(words[0], tuple(sorted(params)))


def worst_gradient(record: dict[str, Any]) -> float:
    """The worst case over the gradient attacks (model completion left out) of one training."""
    return max(v["ap_adaptive"] for k, v in record["attacks"].items() if k in GRADIENT_ATTACKS)


def setting_of(key: str) -> Setting:
    """The benchmark's setting named ``dataset/top``."""
    for setting in FULL_SETTINGS:
        if setting.key == key:
            return setting
    raise SystemExit(f"unknown setting {key!r}; known: {[s.key for s in FULL_SETTINGS]}")


def summary_rows(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[list[str]]:
    """Per defence: MP and worst gradient AP (mean ± sd over seeds), and MP loss against ``none`` in points."""
    none_mp = {r["seed"]: r["mp"] for r in records if r["label"] == "none"}
    rows = []
    for label in labels:
        runs = [r for r in records if r["label"] == label]
        mp, mp_sd = mean_std([r["mp"] for r in runs])
        loss, _ = mean_std([100 * (none_mp[r["seed"]] - r["mp"]) for r in runs if r["seed"] in none_mp])
        worst, worst_sd = mean_std([worst_gradient(r) for r in runs])
        rows.append([label, str(len(runs)), f"{mp:.4f} ± {mp_sd:.4f}", f"{loss:.1f}", f"{worst:.3f} ± {worst_sd:.3f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Train, print a line per training and the table."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--setting", default="fashion_mnist/sum", help="dataset/top of the benchmark's settings")
    parser.add_argument(
        "--defence",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME [KEY=VALUE ...]",
        help="a defence and its parameters; repeat for more",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=None, help="autoencoder cache (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    setting = setting_of(args.setting)
    try:
        specs = [DefenceSpec("none"), *(parse_spec(words) for words in args.defence)]
    except ValueError as err:
        raise SystemExit(str(err)) from None
    data, _ = load_setting_data(setting)
    ae_epochs = autoencoder_epochs(int(data.num_classes), quick=False)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        for spec in specs:
            for seed in args.seeds:
                record = run_one(setting, spec, seed, data, out, ae_epochs)
                records.append(record)
                aps = ", ".join(f"{a} {v['ap_adaptive']:.3f}" for a, v in record["attacks"].items())
                print(f"{setting.key} {spec.label} seed {seed}: MP {record['mp']:.4f}; {aps}", flush=True)
    header = ["defence", "seeds", "MP", "MP loss, points", "worst gradient AP"]
    print(markdown_table(header, summary_rows(records, list(dict.fromkeys(s.label for s in specs)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
