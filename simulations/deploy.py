"""`fl-kd-deploy`: run a KD strategy as a real Flower deployment (SuperLink + SuperNodes, TLS) on loopback.

The same composed config as ``fl-kd-sim`` drives the same ServerApp and ClientApp, but every component is a process
of its own, as on real machines: one ``flower-superlink``, one ``flower-supernode`` per client (its partition given by
``--node-config "partition-id=i num-partitions=N"``), and ``flwr run`` submitting the app over the SuperLink's Control
API. Everything listens on 127.0.0.1 only. Deployment settings are the config's ``deploy`` node::

    fl-kd-deploy deploy.supernodes=2 deploy.tls=false num_clients=3 strategy.rounds=2
    fl-kd-deploy deploy.resume=outputs/2026-11-30/10-00-00     # a run that died: resume after its last round

The pieces: :mod:`~fl_kd.simulations.deploy_settings` (the ``deploy`` node), :mod:`~fl_kd.simulations.tls`
(certificates), :mod:`~fl_kd.simulations.processes` (starting and stopping processes by PID) and
:mod:`~fl_kd.simulations.loopback` (the SuperLink and SuperNodes). This module runs one experiment on them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import ConfigError, to_mapping
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.node_partitions import NODE_PARTITIONS_KEY, encode_node_partitions
from fl_kd.kd.progress import CLIENT_STATE_DIR_KEY, folder_run_id
from fl_kd.kd.protocol import OUTPUT_DIR_KEY, RUN_CONFIG_KEY, RUN_ID_KEY
from fl_kd.kd.runner import summarise
from fl_kd.results import METRICS_JSONL, finished_rounds, format_round_line, print_summary_table, server_error
from fl_kd.runtime import check_device_available
from fl_kd.simulations.cli import user_errors_exit
from fl_kd.simulations.deploy_settings import DEPLOY_KEY, DeploySettings, split_deploy_settings
from fl_kd.simulations.flower_launcher import write_app
from fl_kd.simulations.health import DeploymentError
from fl_kd.simulations.loopback import Endpoints, LoopbackDeployment
from fl_kd.simulations.node_data import dataset_node_configs, write_partition_folders
from fl_kd.simulations.processes import hold_folder, interrupt_exit_code, tail, termination_as_interrupt

__all__ = ["DeploySettings", "DeploymentError", "Endpoints", "main", "run_deployment", "split_deploy_settings"]

log = logging.getLogger(__name__)

LAUNCHER_LOG = "deploy.log"
"""The launcher's own log in the run folder (Hydra names it after the command's module)."""


class RoundTail:
    """Print one line per round as the ServerApp appends it to ``metrics.jsonl`` (the file, not its log, is read)."""

    def __init__(self, path: Path, echo: bool = True) -> None:
        self.path = path
        self.echo = echo
        self.rows: list[dict[str, Any]] = []

    def poll(self) -> None:
        """Print the rounds finished since the last call."""
        try:
            lines = self.path.read_text().split("\n")[:-1]  # the last piece is a line still being written
        except OSError:
            return
        for line in lines[len(self.rows) :]:
            row = json.loads(line)
            self.rows.append(row)
            if self.echo:
                print(format_round_line(row), flush=True)


def run_deployment(
    experiment: ExperimentConfig,
    out_dir: Path,
    settings: DeploySettings | None = None,
    on_ready: Callable[[Endpoints], None] | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Run one experiment on a loopback Flower deployment into ``out_dir``; return its per-round metrics.

    The run folder gets what ``fl-kd-sim`` writes (config, metrics, summary, plots, ``server.pt``), plus
    ``flower_app/`` (the app ``flwr run`` packs), ``.flwr/config.toml`` (the CLI connection) and ``deploy/``
    (certificates, SuperLink database, one log per process, ``flwr-run.log``).

    Parameters
    ----------
    experiment : ExperimentConfig
        The experiment (see :func:`~fl_kd.simulations.deploy_settings.split_deploy_settings`).
    out_dir : Path
        Run folder.
    settings : DeploySettings | None (default: None)
        Deployment settings; ``None`` takes the defaults (TLS, one SuperNode per client). With ``resume``,
        ``out_dir`` must be that folder: its progress, node data and client states are used, not replaced.
    on_ready : Callable[[Endpoints], None] | None (default: None)
        Called once the SuperLink answers and all SuperNodes are online, before the run is submitted.
    echo : bool (default: True)
        Print a few start-up lines and one line per round; the components' output goes to ``deploy/*.log`` only.

    Raises
    ------
    DeploymentError
        A component exited early, a wait timed out, or the run did not record all its rounds.
    """
    settings, out_dir = settings or DeploySettings(), out_dir.resolve()
    if settings.resume is not None and Path(settings.resume).resolve() != out_dir:
        raise ConfigError(f"deploy.resume={settings.resume} resumes that folder, not {out_dir}")
    with hold_folder(out_dir), _launcher_log(out_dir / LAUNCHER_LOG):
        return _deploy(experiment, out_dir, settings, on_ready, echo)


@contextmanager
def _launcher_log(path: Path) -> Iterator[None]:
    """Append the launcher's log to the run folder's ``deploy.log`` while it runs, unless a handler already does.

    Hydra writes ``deploy.log`` into the folder it creates for the command, which for ``deploy.resume`` is a new one
    beside the run folder: without this, the resumed attempt's log would not be where its first attempt's is.
    """
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        yield
        return
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _deploy(
    experiment: ExperimentConfig,
    out_dir: Path,
    settings: DeploySettings,
    on_ready: Callable[[Endpoints], None] | None,
    echo: bool,
) -> list[dict[str, Any]]:
    say: Callable[[str], None] = (lambda text: print(text, flush=True)) if echo else log.info
    algorithm = get_algorithm(experiment.strategy.name)
    # What fl-kd-sim checks before Flower starts: an unusable device, a missing dataset or a bad checkpoint is one
    # clear error here, not a ServerApp's traceback once the whole deployment is up.
    check_device_available(experiment.device)
    federation = build_federation(experiment)
    algorithm.build_server(experiment, federation)
    deploy_dir = out_dir / "deploy"
    if settings.resume is not None:
        set_aside = _set_aside_attempt(deploy_dir)
        if set_aside is not None:
            log.info("The dead attempt's component files are in %s", set_aside)
    deploy_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_mapping(experiment)))
    (deploy_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    app_dir = write_app(
        out_dir / "flower_app",
        algorithm.server_app,
        algorithm.client_app,
        {
            RUN_CONFIG_KEY: experiment.to_json(),
            OUTPUT_DIR_KEY: str(out_dir),
            RUN_ID_KEY: folder_run_id(out_dir),  # kept in the folder: a moved folder's clients find their states
            CLIENT_STATE_DIR_KEY: "",  # default: client-state/ in each node's data-dir (or in output-dir)
            NODE_PARTITIONS_KEY: "",  # set at submission once the SuperNodes are registered (Flower checks the key)
            **settings.round_policy().to_run_config(),
        },
    )
    (out_dir / METRICS_JSONL).unlink(missing_ok=True)  # a stale file would be shown as this run's rounds
    rounds = RoundTail(out_dir / METRICS_JSONL, echo)

    started = time.monotonic()
    if settings.node_data == "folder":
        node_configs = write_partition_folders(experiment, deploy_dir / "data", federation)
    else:
        node_configs = dataset_node_configs(experiment)
    deployment = LoopbackDeployment(deploy_dir, out_dir / ".flwr", experiment.num_clients, settings, node_configs)
    security = "insecure" if deployment.tls is None else f"TLS, CA {deployment.tls.ca_cert}"
    if deployment.auth:
        security += ", SuperNode authentication"
    say(
        f"Deploying {experiment.strategy.name} on {experiment.dataset.name}: {experiment.num_clients} clients, "
        f"{experiment.strategy.rounds} rounds; SuperLink on {deployment.superlink} ({security})"
    )
    say(f"Component logs: {deploy_dir}")
    if settings.resume is not None:
        say(f"Resuming the run in {out_dir} after its last saved round")
    with termination_as_interrupt():
        try:
            endpoints = deployment.start()
            say(f"SuperLink and {experiment.num_clients} SuperNodes online after {time.monotonic() - started:.1f} s")
            if on_ready is not None:
                on_ready(endpoints)
            # With authentication the launcher knows each partition's node: the ServerApp refuses any other claim.
            registered = [deployment.registered[p] for p in sorted(deployment.registered)]
            pinned = f'{NODE_PARTITIONS_KEY}="{encode_node_partitions(registered)}"' if registered else None
            code = deployment.submit(app_dir, on_poll=rounds.poll, run_config=pinned)
        finally:
            deployment.stop()
    say(f"Deployment finished in {time.monotonic() - started:.1f} s")

    rows = finished_rounds(out_dir, code, experiment.strategy.rounds)
    if rows is None:
        server_error(out_dir)  # raises a user's mistake as its one line, as in a simulation
        raise DeploymentError(
            f"`flwr run` ended with exit code {code} before the ServerApp wrote its "
            f"{experiment.strategy.rounds} rounds and its summary; "
            f"see {deployment.run_log} and {deployment.superlink_log}. End of {deployment.run_log.name}:\n"
            f"{tail(deployment.run_log)}"
        )
    return rows


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="deploy")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, deploy on loopback, summarise."""
    experiment, settings = split_deploy_settings(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if settings.resume is not None:
        given = [item for item in HydraConfig.get().overrides.task if not _deploy_or_hydra(item)]
        if given:
            raise ConfigError(f"deploy.resume continues the experiment saved in {settings.resume}; drop {given}")
        out_dir = Path(settings.resume)
    try:
        rows = run_deployment(experiment, out_dir, settings)
    except KeyboardInterrupt as err:
        print(f"Interrupted ({str(err) or 'Ctrl-C'}); every process of the deployment was stopped.", file=sys.stderr)
        raise SystemExit(interrupt_exit_code(err)) from None
    except DeploymentError as err:  # the message names the log files; a traceback would add nothing
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print_summary_table(rows, title=f"fl-kd {experiment.strategy.name} on {experiment.dataset.name} (deployment)")
    summary = summarise(rows, wall_seconds=sum(float(row["wall_seconds"]) for row in rows))
    print(f"server accuracy {summary.get('final_server_acc', float('nan')):.4f}; run folder: {out_dir}")


def _set_aside_attempt(deploy_dir: Path) -> Path | None:
    """Move a dead attempt's component files (SuperLink database, logs, keys, certificates, ``FLWR_HOME`` folders)
    into ``deploy/attempt-<n>/``, so the resumed deployment starts as a fresh one does; the nodes' data folders,
    with the client states saved in them, stay. Returns that folder (None when there was nothing to move)."""
    if not deploy_dir.is_dir():
        return None
    entries = [path for path in deploy_dir.iterdir() if path.name != "data" and not path.name.startswith("attempt-")]
    if not entries:
        return None
    target = deploy_dir / f"attempt-{1 + sum(1 for _ in deploy_dir.glob('attempt-*'))}"
    target.mkdir()
    for path in entries:
        path.rename(target / path.name)
    return target


def _deploy_or_hydra(override: str) -> bool:
    """Whether a command-line override sets a ``deploy.*`` or ``hydra.*`` key (not the experiment)."""
    return override.split("=", 1)[0].lstrip("+~").startswith((f"{DEPLOY_KEY}.", "hydra."))


if __name__ == "__main__":
    main()
