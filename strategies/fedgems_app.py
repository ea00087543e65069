"""ServerApp of selective knowledge distillation: builds the server from the run config and runs the strategy.

Run config keys (scalars, as Flower requires):

* ``fl-kd-config``: the experiment as JSON (:meth:`fl_kd.kd.config.ReferenceConfig.to_json`);
* ``output-dir``: folder for per-round metrics, summary, plots and the final server checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_kd.kd.config import ReferenceConfig
from fl_kd.kd.federation import build_federation, build_server
from fl_kd.kd.runner import summarise
from fl_kd.results import RoundRecorder, format_round_line, write_outputs
from fl_kd.strategies.fedgems import FedGEMS

CONFIG_KEY = "fl-kd-config"
OUTPUT_KEY = "output-dir"
CHECKPOINT = "server.pt"

app = ServerApp()


def make_strategy(cfg: ReferenceConfig, on_round_end: Callable[[dict[str, Any]], None] | None = None) -> FedGEMS:
    """The strategy with a freshly built (or checkpoint-restored) server for ``cfg``."""
    federation = build_federation(cfg)
    return FedGEMS(
        build_server(cfg, federation),
        federation.data.x_test,
        federation.data.y_test,
        client_tiers=federation.tier_names(),
        num_clients=federation.num_clients,
        fraction_train=cfg.fraction_fit,
        seed=cfg.seed,
        logits_dtype=cfg.logits_dtype,
        on_round_end=on_round_end,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the federation's server side, run the rounds, and write the run folder."""
    torch.set_num_threads(1)
    cfg = ReferenceConfig.from_json(str(context.run_config[CONFIG_KEY]))
    out_dir = Path(str(context.run_config[OUTPUT_KEY]))
    recorder = RoundRecorder(out_dir)

    def on_round_end(row: dict[str, Any]) -> None:
        recorder.record(row)
        log(INFO, "%s", format_round_line(row))

    strategy = make_strategy(cfg, on_round_end)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.rounds)
    strategy.server.save(out_dir / CHECKPOINT)
    summary = summarise(strategy.history, wall_seconds=sum(float(r["wall_seconds"]) for r in strategy.history))
    write_outputs(out_dir, strategy.history, summary)
    log(INFO, "Summary: %s", json.dumps(summary, sort_keys=True))
