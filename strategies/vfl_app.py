"""ServerApp of vertical (split) federated learning: reads the run from the run config and drives the parties.

Run config keys (scalars, as Flower requires):

* ``fl-kd-vfl-config``: the run as JSON (:meth:`fl_kd.strategies.vfl.VFLAppConfig.to_json`);
* ``output-dir``: folder that receives ``results.json`` (MP, AP per attack, losses, skipped batches, timings).
"""

from __future__ import annotations

import json
import math
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_kd.strategies.vfl import CONFIG_KEY, OUTPUT_KEY, RESULTS_FILE, VFLAppConfig, VFLServer

app = ServerApp()


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results as indented, strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(results), indent=2))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one VFL experiment over the grid and write its results."""
    torch.set_num_threads(1)
    cfg = VFLAppConfig.from_json(str(context.run_config[CONFIG_KEY]))
    results = VFLServer(cfg).run(grid)
    write_results(Path(str(context.run_config[OUTPUT_KEY])) / RESULTS_FILE, results)
    log(
        INFO,
        "VFL done: MP %.4f, %d batches skipped, attacks %s",
        results["mp"],
        results["skipped_batches"],
        {name: r.get("ap") for name, r in results["attacks"].items()},
    )
