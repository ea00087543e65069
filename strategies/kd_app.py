"""The ServerApp of every KD algorithm: builds the registered server half from the run config and runs the rounds.

Run config keys (scalars, as Flower requires) are those of :mod:`fl_kd.kd.protocol`: the experiment as JSON and the
run folder for per-round metrics, summary, plots and the final server state.
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

from fl_kd.config import to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.runner import summarise
from fl_kd.plots import run_title
from fl_kd.results import RoundRecorder, format_round_line, write_outputs
from fl_kd.strategies.console import quiet_flower_console
from fl_kd.strategies.kd import KDStrategy

#: Flower's own per-round log of the ServerApp, in the run folder.
SERVER_LOG = "server.log"

app = ServerApp()


def make_strategy(cfg: ExperimentConfig, on_round_end: Callable[[dict[str, Any]], None] | None = None) -> KDStrategy:
    """The strategy around a freshly built (or checkpoint-restored) server half of ``cfg``'s algorithm."""
    federation = build_federation(cfg)
    return KDStrategy(
        get_algorithm(cfg.strategy.name).build_server(cfg, federation),
        federation,
        fraction_train=cfg.strategy.fraction_fit,
        seed=cfg.seed,
        max_abs_value=cfg.max_abs_value,
        on_round_end=on_round_end,
        test_set=lambda server_round: federation.test_set(cfg, server_round),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the federation's server side, run the rounds, and write the run folder."""
    torch.set_num_threads(1)
    cfg = ExperimentConfig.from_json(str(context.run_config[kd.RUN_CONFIG_KEY]))
    out_dir = Path(str(context.run_config[kd.OUTPUT_DIR_KEY]))
    recorder = RoundRecorder(out_dir)

    def on_round_end(row: dict[str, Any]) -> None:
        recorder.record(row)
        print(format_round_line(row), flush=True)  # the one console line per round

    with quiet_flower_console(out_dir / SERVER_LOG):
        strategy = make_strategy(cfg, on_round_end)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds)
        strategy.server.save(out_dir / kd.CHECKPOINT_FILE)
        summary = summarise(strategy.history, wall_seconds=sum(float(r["wall_seconds"]) for r in strategy.history))
        write_outputs(out_dir, strategy.history, summary, title=run_title(to_mapping(cfg)))
        log(INFO, "Summary: %s", json.dumps(summary, sort_keys=True))
