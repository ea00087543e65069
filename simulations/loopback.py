"""One SuperLink and its SuperNodes on 127.0.0.1, as separate processes talking HTTPS, and ``flwr run`` on them.

Each component gets its own ``FLWR_HOME`` and log file in the deployment folder; the Flower CLI gets a connection
``config.toml`` naming the SuperLink (and its CA). The :class:`~fl_kd.simulations.processes.ProcessSupervisor`
stops everything that was started, whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fl_kd.config import ConfigError
from fl_kd.secret import SERVER_KEY_ENV
from fl_kd.simulations.deploy_settings import DeploySettings
from fl_kd.simulations.flower_launcher import flower_env, free_port
from fl_kd.simulations.health import DeploymentError, answers, online_nodes
from fl_kd.simulations.node_auth import NodeKeys, RegistrationError, make_node_keys, register_nodes
from fl_kd.simulations.processes import ProcessSupervisor, find_processes, tail, uninterruptible
from fl_kd.simulations.tls import LOOPBACK_HOSTS, TlsFiles, generate_certificates, load_certificates

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CONNECTION = "fl-kd-deploy"


@dataclass(frozen=True)
class Endpoints:
    """Where the running deployment listens, handed to ``on_ready`` before the run is submitted."""

    superlink: str
    supernodes: tuple[str, ...]
    tls: TlsFiles | None
    flwr_home: Path
    connection: str = CONNECTION
    node_ids: tuple[int, ...] = field(default_factory=tuple)


def write_connection(flwr_home: Path, address: str, tls: TlsFiles | None) -> Path:
    """Write the Flower CLI's ``config.toml`` with one default SuperLink connection to ``address``.

    With TLS the CLI verifies the SuperLink against ``root-certificates`` (an absolute path, as flwr requires);
    without, the connection says ``insecure = true`` explicitly, since flwr defaults to TLS.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f"root-certificates = {json.dumps(str(tls.ca_cert))}" if tls else "insecure = true"
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n'
    )
    return path


def superlink_command(port: int, tls: TlsFiles | None, database: Path, auth: bool = False) -> list[str]:
    """``flower-superlink`` serving its HTTP API (Fleet, Control, ServerAppIo) on 127.0.0.1:``port``.

    With ``auth`` only SuperNodes whose public key is registered may connect (Flower requires TLS for it).
    """
    command = ["flower-superlink", "--host", LOOPBACK, "--port", str(port), "--database", str(database)]
    # The app's dependencies are this venv's; a per-run `uv sync` would build a fresh environment.
    command.append("--disable-runtime-dependency-installation")
    if auth:
        command.append("--enable-supernode-auth")
    if tls is None:
        return [*command, "--insecure"]
    return [*command, *_serve_tls(tls)]


def _serve_tls(tls: TlsFiles) -> list[str]:
    """Arguments of a Flower server (SuperLink, or a SuperNode's runtime API) that serves HTTPS."""
    return [
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
    ]  # fmt: skip


def supernode_command(
    superlink: str,
    port: int,
    partition_id: int,
    num_partitions: int,
    tls: TlsFiles | None,
    node_config: Mapping[str, str | int] | None = None,
    private_key: Path | None = None,
    max_wait_s: float | None = None,
) -> list[str]:
    """``flower-supernode`` for one partition; its runtime API (for its ClientApp processes) on 127.0.0.1:``port``.

    ``node_config`` adds keys to ``--node-config`` (the node's data and tier, see :mod:`fl_kd.data.node_local`);
    ``private_key`` is the node's registered authentication key. With TLS the SuperNode verifies the SuperLink
    against the CA, and its own runtime API is served with the same server certificate, so no traffic of the
    deployment is in clear text, not even on loopback. ``max_wait_s``: how long the node keeps trying a SuperLink
    that does not answer before it exits; without it, a SuperNode started by hand retries forever once the
    launcher has stopped its SuperLink.
    """
    command = [
        "flower-supernode",
        "--superlink", superlink,
        "--host", LOOPBACK,
        "--port", str(port),
        "--node-config", node_config_arg({"partition-id": partition_id, "num-partitions": num_partitions,
                                          **(node_config or {})}),
    ]  # fmt: skip
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    if max_wait_s is not None:
        command += ["--max-wait-time", f"{max_wait_s:g}"]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--root-certificates", str(tls.ca_cert), *_serve_tls(tls)]


def node_config_arg(node_config: Mapping[str, str | int]) -> str:
    """``--node-config``'s value: ``key=value`` pairs, strings double-quoted (Flower parses each value as TOML)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node_config.items())


_ACTIVATED = re.compile(rb"Activated node_id=(\d+)")


def _activated_nodes(superlink_log: Path) -> int:
    try:
        return len(set(_ACTIVATED.findall(superlink_log.read_bytes())))
    except OSError:
        return 0


def _wait(condition: Callable[[], bool], deadline: float, what: str, check: Callable[[], None]) -> None:
    while not condition():
        check()
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out waiting for {what}")
        time.sleep(0.5)


class LoopbackDeployment:
    """One SuperLink and its SuperNodes on 127.0.0.1, started and stopped as a unit.

    Parameters
    ----------
    deploy_dir : Path
        Folder for certificates, keys, the SuperLink database, one log and one ``FLWR_HOME`` per component.
    cli_home : Path
        ``FLWR_HOME`` of the Flower CLI, where the connection ``config.toml`` goes.
    num_partitions : int
        Partitions of the federation; the run waits for one online SuperNode per partition.
    settings : DeploySettings
        How many SuperNodes to start here, TLS, authentication, timeouts.
    node_configs : Sequence[Mapping[str, str | int]] | None (default: None)
        Per partition, the node config keys beyond ``partition-id``/``num-partitions`` (its data and device tier).
    """

    def __init__(
        self,
        deploy_dir: Path,
        cli_home: Path,
        num_partitions: int,
        settings: DeploySettings,
        node_configs: Sequence[Mapping[str, str | int]] | None = None,
    ) -> None:
        self.deploy_dir = deploy_dir
        self.cli_home = cli_home
        self.num_partitions = num_partitions
        self.settings = settings
        self.node_configs = list(node_configs or [{} for _ in range(num_partitions)])
        if len(self.node_configs) != num_partitions:
            raise ValueError(f"{len(self.node_configs)} node configs for {num_partitions} partitions")
        self.local = settings.local_supernodes(num_partitions)
        self.tls: TlsFiles | None = None
        if settings.tls and settings.certificates:
            try:
                self.tls = load_certificates(settings.certificates, host=LOOPBACK)
            except ValueError as err:
                raise ConfigError(f"deploy.certificates: {err}") from err
        elif settings.tls:
            self.tls = generate_certificates(deploy_dir / "certs")
        self.auth = settings.authenticate
        self.keys: list[NodeKeys] = []
        self.registered: dict[int, int] = {}  # partition id -> node id given at registration
        self.lost: set[str] = set()  # SuperNodes that exited while the run went on
        self.superlink = f"{LOOPBACK}:{free_port()}"
        self.supernodes = tuple(f"{LOOPBACK}:{free_port()}" for _ in range(self.local))
        self.superlink_log = deploy_dir / "superlink.log"
        self.run_log = deploy_dir / "flwr-run.log"
        self.supervisor = ProcessSupervisor()
        write_connection(cli_home, self.superlink, self.tls)

    def env(self, home: Path) -> dict[str, str]:
        """A component's environment: its own ``FLWR_HOME``, and no proxy between it and loopback."""
        home.mkdir(parents=True, exist_ok=True)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), *LOOPBACK_HOSTS]))
        return {**flower_env(home), "NO_PROXY": no_proxy, "no_proxy": no_proxy}

    def node_env(self, home: Path) -> dict[str, str]:
        """A SuperNode's environment: a component's, without the server's key (its ClientApps are the clients)."""
        env = self.env(home)
        env.pop(SERVER_KEY_ENV, None)
        return env

    def supernode_command(self, partition_id: int, port: int, private_key: Path | None = None) -> list[str]:
        """The command of partition ``partition_id``'s SuperNode, with its node config and (with auth) its key; it
        gives up on a SuperLink that stops answering after ``deploy.startup_timeout_s``, as the launcher gives up on
        a SuperNode that does not come online."""
        if private_key is None and self.keys:
            private_key = self.keys[partition_id].private
        return supernode_command(
            self.superlink, port, partition_id, self.num_partitions, self.tls, self.node_configs[partition_id],
            private_key, float(self.settings.startup_timeout_s),
        )  # fmt: skip

    def start_supernode(self, name: str, partition_id: int, private_key: Path | None = None) -> None:
        """Start a SuperNode for ``partition_id`` as ``name`` (its log ``<name>.log``), stopped with the rest."""
        self.supervisor.start(
            name,
            self.supernode_command(partition_id, free_port(), private_key),
            self.node_env(self.deploy_dir / name),
            self.deploy_dir / f"{name}.log",
            self.deploy_dir,
        )

    def start(self) -> Endpoints:
        """Start the SuperLink and the local SuperNodes; return once all partitions' SuperNodes are online.

        With authentication every partition gets a key pair in ``keys/`` and its public key is registered (the
        SuperLink must answer first); without, SuperNodes start at once with the SuperLink: both need seconds to
        import, and a SuperNode retries until the SuperLink answers.
        """
        started = time.monotonic()
        deadline = started + self.settings.startup_timeout_s
        port = int(self.superlink.rsplit(":", 1)[1])
        self.supervisor.start(
            "superlink",
            superlink_command(port, self.tls, self.deploy_dir / "superlink.db", self.auth),
            self.env(self.deploy_dir / "superlink"),
            self.superlink_log,
            self.deploy_dir,
        )

        def superlink_up() -> bool:
            return answers(self.superlink, self.tls)

        if self.auth:
            folder = self.deploy_dir / "keys"
            self.keys = [make_node_keys(folder, f"supernode-{i}") for i in range(self.num_partitions)]
            _wait(superlink_up, deadline, f"the SuperLink on {self.superlink}", self.check)
            public_keys = [keys.public for keys in self.keys]
            try:
                ids = register_nodes(public_keys, CONNECTION, self.env(self.cli_home), self.cli_home)
            except (RegistrationError, subprocess.TimeoutExpired) as err:
                raise DeploymentError(f"registering the SuperNodes' keys failed: {err}") from err
            self.registered = dict(enumerate(ids))
            log.info("Registered %d SuperNode keys: %s", len(ids), self.registered)
        for partition_id, address in enumerate(self.supernodes):
            name = f"supernode-{partition_id}"
            self.supervisor.start(
                name,
                self.supernode_command(partition_id, int(address.rsplit(":", 1)[1])),
                self.node_env(self.deploy_dir / name),
                self.deploy_dir / f"{name}.log",
                self.deploy_dir,
            )
        for partition_id in range(self.local, self.num_partitions):
            command = self.supernode_command(partition_id, free_port())
            shown = " ".join(f"'{arg}'" if " " in arg or '"' in arg else arg for arg in command)
            print(f"Waiting for partition {partition_id}; start its SuperNode with:\n  {shown}", flush=True)

        _wait(superlink_up, deadline, f"the SuperLink on {self.superlink}", self.check)
        node_ids: list[int] = []
        last_listed = time.monotonic()

        def all_online() -> bool:
            # The SuperLink logs each activation, which is cheap to watch; `flwr supernode list` (a CLI process,
            # ~2 s of CPU that the starting nodes need) confirms once the log agrees, or every 10 s regardless.
            nonlocal last_listed
            if _activated_nodes(self.superlink_log) < self.num_partitions and time.monotonic() - last_listed < 10.0:
                return False
            last_listed = time.monotonic()
            node_ids[:] = online_nodes(self.env(self.cli_home), self.cli_home)
            return len(node_ids) >= self.num_partitions

        _wait(all_online, deadline, f"{self.num_partitions} SuperNodes to come online", self.check)
        log.info("SuperLink and %d SuperNodes online after %.1f s", self.num_partitions, time.monotonic() - started)
        return Endpoints(self.superlink, self.supernodes, self.tls, self.cli_home, node_ids=tuple(node_ids))

    def check(self, running: bool = False) -> None:
        """Raise :class:`DeploymentError` if the SuperLink, or at start-up a local SuperNode, has exited.

        Once the run is ``running``, a SuperNode that exits is logged (once) and the run goes on without it: the
        strategy's round timeout and minimum of answering clients decide whether the round still counts.
        """
        for name in ("superlink", *(f"supernode-{partition_id}" for partition_id in range(self.local))):
            if name not in self.supervisor.processes:  # with authentication, SuperNodes start after registration
                continue
            code = self.supervisor.exit_code(name)
            if code is None or name in self.lost:
                continue
            log_path = self.deploy_dir / f"{name}.log"
            if running and name != "superlink":
                self.lost.add(name)
                log.warning("%s exited with code %s during the run; the run goes on without it", name, code)
                continue
            raise DeploymentError(f"{name} exited with code {code}; end of {log_path}:\n{tail(log_path)}")
        self.supervisor.track()

    def submit(self, app_dir: Path, on_poll: Callable[[], None] | None = None, run_config: str | None = None) -> int:
        """``flwr run`` the app on this deployment, its output to ``flwr-run.log``; return the CLI's exit code.

        ``on_poll`` is called about twice a second while the run goes on, and once after it ends. ``run_config``
        overrides run config keys (``flwr run --run-config``).
        """
        command = ["flwr", "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config]
        run = self.supervisor.start("flwr-run", command, self.env(self.cli_home), self.run_log, self.cli_home)
        timeout = self.settings.run_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while run.poll() is None:
            self.check(running=True)
            if on_poll is not None:
                on_poll()
            if deadline is not None and time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish within {timeout} s")
            time.sleep(0.5)
        if on_poll is not None:
            on_poll()
        return int(run.returncode)

    def stop(self) -> None:
        """Stop every process of the deployment (see :meth:`ProcessSupervisor.stop`), immune to a second Ctrl-C."""
        with uninterruptible():
            killed = self.supervisor.stop()
        if killed:
            log.warning("Killed %d process(es) that ignored SIGTERM: %s", len(killed), [proc.pid for proc in killed])


def running_processes(run_dir: Path) -> list[int]:
    """Live processes whose command line or environment names ``run_dir``: what a deployment left behind there.

    Every Flower process of a deployment inherits an ``FLWR_HOME`` inside the run folder (and, with TLS, has
    certificate paths there on its command line), so this finds them independently of the launcher's bookkeeping.
    """
    return [proc.pid for proc in find_processes(str(run_dir.resolve()), where=("cmdline", "environ"))]
