"""The ServerApp of every KD algorithm: builds the registered server half from the run config and runs the rounds.

Run config keys (scalars, as Flower requires) are those of :mod:`fl_kd.kd.protocol`: the experiment as JSON and the
run folder for per-round metrics, summary, plots and the final server state; a deployment adds its round policy
(:mod:`fl_kd.kd.round_policy`) and, with SuperNode authentication, each partition's node
(:mod:`fl_kd.kd.node_partitions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_kd.config import to_mapping
from fl_kd.errors import USER_ERRORS
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.node_partitions import encode_node_partitions, node_partitions
from fl_kd.kd.progress import ProgressError, load_progress
from fl_kd.kd.round_policy import RoundPolicy
from fl_kd.kd.runner import summarise
from fl_kd.plots import run_title
from fl_kd.results import (
    SERVER_ERROR_JSON,
    SERVER_LOG,
    RoundRecorder,
    format_round_line,
    record_server_error,
    write_outputs,
)
from fl_kd.strategies.console import quiet_flower_console
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_rounds import run_rounds

#: Flower's own per-round log of the ServerApp, in the run folder.

app = ServerApp()


def make_strategy(
    cfg: ExperimentConfig,
    on_round_end: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 600.0,
    node_partitions: Mapping[int, int] | None = None,
) -> KDStrategy:
    """The strategy around a freshly built (or checkpoint-restored) server half of ``cfg``'s algorithm."""
    federation = build_federation(cfg)
    return KDStrategy(
        get_algorithm(cfg.strategy.name).build_server(cfg, federation),
        federation,
        fraction_train=cfg.strategy.fraction_fit,
        seed=cfg.seed,
        max_abs_value=cfg.max_abs_value,
        on_round_end=on_round_end,
        timeout=timeout,
        test_set=lambda server_round: federation.test_set(cfg, server_round),
        evaluated=lambda server_round: federation.evaluated_clients(cfg, server_round),
        trend_set=lambda server_round: federation.trend_test_set(cfg, server_round),
        node_partitions=node_partitions,
    )


@contextmanager
def reported_errors(out_dir: Path) -> Iterator[None]:
    """Leave what the rounds raised in the run folder (the launching command reports it), then let it end the app."""
    (out_dir / SERVER_ERROR_JSON).unlink(missing_ok=True)
    try:
        yield
    except Exception as error:
        record_server_error(out_dir, error, isinstance(error, USER_ERRORS))
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the federation's server side, run the rounds, and write the run folder."""
    torch.set_num_threads(1)
    out_dir = Path(str(context.run_config[kd.OUTPUT_DIR_KEY]))
    # From the first read of the run config on: a resumed run's folder may hold an earlier attempt's error.
    with reported_errors(out_dir):
        _serve(grid, context, out_dir)


def _serve(grid: Grid, context: Context, out_dir: Path) -> None:
    experiment_json = str(context.run_config[kd.RUN_CONFIG_KEY])
    cfg = ExperimentConfig.from_json(experiment_json)
    policy = RoundPolicy.from_run_config(context.run_config)
    resumed = load_progress(out_dir, experiment_json) if policy.resume else None
    if policy.resume and resumed is None:  # a mistyped or remounted output-dir would start a second run in silence
        raise ProgressError(f"resume=true: {out_dir} holds no saved round; submit the run without resume to start it")
    recorder = RoundRecorder(out_dir)
    for row in resumed.history if resumed is not None else []:
        recorder.record(row)

    def on_round_end(row: dict[str, Any]) -> None:
        recorder.record(row)
        print(format_round_line(row), flush=True)  # the one console line per round

    (out_dir / SERVER_LOG).touch()  # the launcher's sign that the ServerApp is up (fl_kd.simulations.run)
    with quiet_flower_console(out_dir / SERVER_LOG):
        pinned = node_partitions(context.run_config, cfg.num_clients)
        if pinned is not None:
            log(INFO, "Each partition is held by the node registered for it: %s", encode_node_partitions(list(pinned)))
        strategy = make_strategy(cfg, on_round_end, timeout=policy.round_timeout_s, node_partitions=pinned)
        run_rounds(strategy, grid, cfg.strategy.rounds, policy, out_dir, experiment_json, resumed)
        strategy.server.save(out_dir / kd.CHECKPOINT_FILE)
        summary = summarise(strategy.history, wall_seconds=sum(float(r["wall_seconds"]) for r in strategy.history))
        write_outputs(out_dir, strategy.history, summary, title=run_title(to_mapping(cfg)))
        log(INFO, "Summary: %s", json.dumps(summary, sort_keys=True))
