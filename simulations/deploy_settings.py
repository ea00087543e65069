"""The ``deploy`` node of ``fl-kd-deploy``'s config: how the loopback deployment runs, next to the experiment.

:class:`DeploySettings` is the schema: importing this module stores its defaults as ``/schema/deploy`` (see
:mod:`fl_kd.simulations.schema`), which ``conf/deploy.yaml`` extends, and :func:`split_deploy_settings` checks the
composed node with :func:`fl_kd.config.from_mapping`, so a mistake is one :class:`~fl_kd.config.ConfigError`
naming the ``deploy.*`` key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fl_kd.config import ConfigError, check_choice, check_range, from_mapping, require, require_defaults_unless
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import sample_clients
from fl_kd.kd.progress import PROGRESS_DIR, PROGRESS_FILE
from fl_kd.kd.round_policy import RoundPolicy
from fl_kd.simulations.config import experiment_config
from fl_kd.simulations.schema import plain, store_schema

DEPLOY_KEY = "deploy"

#: Where the SuperNodes this launcher starts get their private data (see :mod:`fl_kd.data.node_local`):
#: ``folder``: each client's partition is written to ``deploy/data/client-<i>/`` and named by ``data-dir``;
#: ``dataset``: each node is named the public dataset and its partition id, and splits it itself (demos).
NODE_DATA = ("folder", "dataset")


@dataclass
class DeploySettings:
    """How the loopback deployment runs.

    Attributes
    ----------
    supernodes : int | None (default: None)
        SuperNodes this launcher starts, for partitions ``0 .. supernodes-1``; ``None`` starts one per client. With
        fewer, the launcher prints the command for each missing partition and waits for it to join.
    tls : bool (default: True)
        Serve every API (SuperLink, SuperNode runtime APIs) over TLS; ``False`` runs them all insecure.
    certificates : str | None (default: None)
        Folder holding ``ca.crt``, ``server.pem`` and ``server.key`` (a certificate valid for 127.0.0.1). ``None``
        makes a throwaway CA and server certificate in the run folder.
    startup_timeout_s : float (default: 180.0)
        Seconds to wait for the SuperLink to answer and for all ``num_clients`` SuperNodes to be online; also how
        long a SuperNode keeps trying a SuperLink that stopped answering before it exits (``--max-wait-time``).
    run_timeout_s : float | None (default: None)
        Stop ``flwr run`` after this many seconds; ``None`` waits for the run to end.
    auth : bool | None (default: None)
        SuperNode authentication: the SuperLink accepts only SuperNodes whose public key was registered (one key
        pair per partition is made in ``deploy/keys/``). ``None``: on with TLS, off without (Flower requires TLS
        for it).
    node_data : str (default: "folder")
        How each SuperNode started here names its private data, one of :data:`NODE_DATA`.
    min_clients : int (default: 1)
        Fewest clients whose reply to the train phase (an answer, or a raised ClientApp's error) must arrive for a
        round to count; below it the run stops after its last complete round (see
        :class:`fl_kd.kd.round_policy.RoundPolicy`).
    round_timeout_s : float (default: 300.0)
        Seconds the ServerApp waits for each phase's replies; a node silent by then (its SuperNode died) is left
        out of the round.
    resume : str | None (default: None)
        Run folder of an earlier ``fl-kd-deploy`` whose run died (ServerApp killed, machine rebooted, launcher
        stopped): the deployment starts again in that folder, the ServerApp resumes after the last round saved
        there, and each client reloads the state its node saved for that round. The experiment is that run's
        (from its ``progress/progress.json``), so no experiment key may be given with it.
    """

    supernodes: int | None = None
    tls: bool = True
    certificates: str | None = None
    startup_timeout_s: float = 180.0
    run_timeout_s: float | None = None
    auth: bool | None = None
    node_data: str = "folder"
    min_clients: int = 1
    round_timeout_s: float = 300.0
    resume: str | None = None

    def __post_init__(self) -> None:
        if self.supernodes is not None:
            check_range("deploy.supernodes", self.supernodes, low=1)
        check_range("deploy.startup_timeout_s", self.startup_timeout_s, low=0.0, low_open=True)
        if self.run_timeout_s is not None:
            check_range("deploy.run_timeout_s", self.run_timeout_s, low=0.0, low_open=True)
        require(
            self.tls or self.certificates is None,
            "deploy.certificates is set but deploy.tls=false; drop one of them",
        )
        require(
            self.tls or not self.auth, "deploy.auth=true needs TLS (Flower refuses it without); drop deploy.tls=false"
        )
        check_choice("deploy.node_data", self.node_data, NODE_DATA)
        check_range("deploy.min_clients", self.min_clients, low=1)
        check_range("deploy.round_timeout_s", self.round_timeout_s, low=0.0, low_open=True)

    @property
    def authenticate(self) -> bool:
        """Whether SuperNode authentication is on (``auth``, or TLS when ``auth`` is None)."""
        return self.tls if self.auth is None else self.auth

    def round_policy(self) -> RoundPolicy:
        """What the ServerApp is told (as run config) about timeouts and the quorum."""
        return RoundPolicy(
            min_clients=self.min_clients, round_timeout_s=float(self.round_timeout_s), resume=self.resume is not None
        )

    def local_supernodes(self, num_clients: int) -> int:
        """SuperNodes to start on this machine for a federation of ``num_clients``."""
        return num_clients if self.supernodes is None else self.supernodes


def split_deploy_settings(cfg: DictConfig | dict[str, Any]) -> tuple[ExperimentConfig, DeploySettings]:
    """Separate the ``deploy`` node from a composed config; check both.

    Raises
    ------
    ConfigError
        An unknown, mistyped or out-of-range ``deploy`` key, an experiment config mistake (see
        :func:`~fl_kd.simulations.config.experiment_config`), or more SuperNodes than clients.
    """
    raw = plain(cfg)
    settings = from_mapping(DeploySettings, raw.pop(DEPLOY_KEY, None) or {}, key=DEPLOY_KEY)
    experiment = experiment_config(raw) if settings.resume is None else saved_experiment(Path(settings.resume))
    if settings.resume is None:  # the simulation's runtime: a deployment runs real SuperNodes and reads none of it
        keys = [field.name for field in dataclasses.fields(experiment.simulation)]
        require_defaults_unless(experiment.simulation, keys, False, "is not read by fl-kd-deploy", "simulation.")
    sampled = len(sample_clients(experiment.num_clients, experiment.strategy.fraction_fit, experiment.seed, 1))
    if settings.min_clients > sampled:
        raise ConfigError(
            f"deploy.min_clients must be at most the {sampled} clients sampled per round "
            f"(num_clients={experiment.num_clients}, strategy.fraction_fit={experiment.strategy.fraction_fit}), "
            f"got {settings.min_clients}"
        )
    if settings.supernodes is not None and settings.supernodes > experiment.num_clients:
        raise ConfigError(
            f"deploy.supernodes must be at most num_clients={experiment.num_clients}, got {settings.supernodes}"
        )
    return experiment, settings


def saved_experiment(run_dir: Path) -> ExperimentConfig:
    """The experiment whose progress ``run_dir`` holds (``deploy.resume``): exactly the one its ServerApp ran.

    Raises
    ------
    ConfigError
        ``run_dir`` has no readable ``progress/progress.json`` (no round of it was ever completed).
    """
    path = run_dir / PROGRESS_DIR / PROGRESS_FILE
    try:
        experiment = json.loads(path.read_text())["experiment"]
    except FileNotFoundError:
        raise ConfigError(
            f"deploy.resume: {run_dir} has no saved round ({path} is missing); nothing to resume"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"deploy.resume: {path} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(experiment, str):  # the ServerApp saves the config as its JSON text
        raise ConfigError(f"deploy.resume: {path}: its experiment is no JSON text of a config")
    try:
        return ExperimentConfig.from_json(experiment)
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"deploy.resume: {path}: its experiment is no usable config ({err})") from None


store_schema(DEPLOY_KEY, DeploySettings())
