"""ServerApp of vertical (split) federated learning: reads the run from the run config and drives the parties.

Run config keys (scalars, as Flower requires; see :mod:`fl_kd.vfl.protocol`):

* ``fl-kd-vfl-config``: the run as JSON (:func:`fl_kd.vfl.protocol.encode_config`);
* ``output-dir``: folder that receives ``results.json`` (MP, AP per attack, losses, skipped batches, timings)
  and ``epochs.jsonl`` (one line per epoch, written as training goes, for the console to follow);
* ``node-roles`` (optional, empty by default): the node id of each feature party, then the label party's, as the
  deployment registered them (:mod:`fl_kd.vfl.node_roles`).
"""

from __future__ import annotations

import logging
from logging import INFO
from pathlib import Path

import torch
from flwr.app import Context
from flwr.common.logger import FLOWER_LOGGER, log
from flwr.serverapp import Grid, ServerApp

from fl_kd.strategies.vfl import VFLServer
from fl_kd.strategies.vfl_grid import QuickPollGrid
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.node_roles import node_roles
from fl_kd.vfl.results import progress_writer, write_results

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one VFL experiment over the grid and write its results."""
    torch.set_num_threads(1)
    # The core logs through `logging` (epoch rows, skipped batches); let those lines join Flower's log stream.
    core_logger = logging.getLogger("fl_kd")
    core_logger.setLevel(INFO)
    for handler in FLOWER_LOGGER.handlers:
        if handler not in core_logger.handlers:
            core_logger.addHandler(handler)
    cfg = vp.decode_config(str(context.run_config[vp.CONFIG_KEY]))
    out_dir = Path(str(context.run_config[vp.OUTPUT_KEY]))
    (out_dir / vp.PROGRESS_FILE).touch()  # the launcher's sign that the ServerApp is up (fl_kd.simulations.vfl)
    pinned = node_roles(context.run_config, cfg.num_feature_parties)
    if pinned is not None:
        log(INFO, "Each role is held by the node registered for it: %s", dict(pinned))
    server = VFLServer(cfg, report=progress_writer(out_dir / vp.PROGRESS_FILE), node_roles=pinned)
    results = server.run(QuickPollGrid(grid))
    write_results(out_dir / vp.RESULTS_FILE, results)
    log(
        INFO,
        "VFL done: MP %.4f, %d batches skipped, attacks %s",
        results["mp"],
        results["skipped_batches"],
        {name: r.get("ap") for name, r in results["attacks"].items()},
    )
