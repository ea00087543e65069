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

from benchmarks.common import markdown_table
from benchmarks.vfl.grid import FULL_SETTINGS, DefenceSpec, Setting
from benchmarks.vfl.run import autoencoder_epochs, load_setting_data, run_one
from benchmarks.vfl.statistics import summarise
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.vfl.probe"


def parse_spec(words: Sequence[str]) -> DefenceSpec:
    """``["gaussian", "scale=0.003", "clip_norm=0.001"]`` -> the spec; values are read as booleans (``true``,
    ``false``) and numbers where they are."""
    if not words:
        raise ValueError("--defence needs a name")
    params: list[tuple[str, Any]] = []
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"defence parameter {word!r} is not KEY=VALUE")
        number: Any
        if value.lower() in ("true", "false"):
            number = value.lower() == "true"
        else:
            try:  # a whole number stays an int: a count such as dcae's bin_numbers refuses 6.0
                number = int(value)
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    number = value
        params.append((key, number))
    return DefenceSpec(words[0], tuple(sorted(params)))


def setting_of(key: str) -> Setting:
    """The benchmark's setting named ``dataset/top``."""
    for setting in FULL_SETTINGS:
        if setting.key == key:
            return setting
    raise SystemExit(f"unknown setting {key!r}; known: {[s.key for s in FULL_SETTINGS]}")


def summary_rows(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[list[str]]:
    """Per defence, from the benchmark's own :func:`~benchmarks.vfl.statistics.summarise`: MP and the worst
    gradient attack (mean ± sd over seeds), and MP loss against the same seed's ``none`` in points."""
    rows = {row["label"]: row for row in summarise(records)[records[0]["setting"]]}
    table = []
    for label in labels:
        row = rows[label]
        (mp, mp_sd), (loss, _), (worst, worst_sd) = row["mp"], row["mp_loss"], row["worst_case_gradient"]
        table.append(
            [
                label,
                str(len(row["seeds"])),
                f"{mp:.4f} ± {mp_sd:.4f}",
                f"{100 * loss:.1f}",
                f"{worst:.3f} ± {worst_sd:.3f}",
            ]
        )
    return table


@user_errors_exit
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
