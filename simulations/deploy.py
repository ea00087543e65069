"""`fl-kd-deploy`: run selective distillation as a real Flower deployment (SuperLink + SuperNodes, TLS) on loopback.

The same composed config as ``fl-kd-sim`` drives the same ServerApp and ClientApp, but every component is a process
of its own, as on real machines: one ``flower-superlink``, one ``flower-supernode`` per client (its partition given by
``--node-config "partition-id=i num-partitions=N"``), and ``flwr run`` submitting the app over the SuperLink's Control
API. Everything listens on 127.0.0.1 only. With TLS (the default) a throwaway CA and a server certificate for
127.0.0.1/localhost are made in the run folder, unless a folder of real certificates is given.

Deployment settings are an optional ``deploy`` node next to the experiment config (``+`` because the key is new)::

    fl-kd-deploy deploy.supernodes=2 deploy.tls=false num_clients=3 strategy.rounds=2

Every process the launcher starts is stopped by PID when it ends, normally, on error or on Ctrl-C, together with
whatever those processes started (SuperExec, ServerApp and ClientApp processes).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fl_kd.kd.runner import summarise
from fl_kd.results import print_summary_table, read_metrics
from fl_kd.simulations.config import ConfigError, validate_config
from fl_kd.simulations.flower_launcher import flower_env, free_port, write_app
from fl_kd.simulations.run import CLIENTAPP, SERVERAPP, reference_config

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEPLOY_KEY = "deploy"
CONNECTION = "fl-kd-deploy"
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


class DeploymentError(RuntimeError):
    """A component of the deployment failed to start, or the run did not finish all its rounds."""


# -- settings ---------------------------------------------------------------------------------------------------------
@dataclass
class DeploySettings:
    """How the loopback deployment runs (the ``deploy`` node of the config).

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
        Seconds to wait for the SuperLink to answer and for all ``num_clients`` SuperNodes to be online.
    run_timeout_s : float | None (default: None)
        Stop ``flwr run`` after this many seconds; ``None`` waits for the run to end.
    """

    supernodes: int | None = None
    tls: bool = True
    certificates: str | None = None
    startup_timeout_s: float = 180.0
    run_timeout_s: float | None = None


def split_deploy_settings(cfg: DictConfig | dict[str, Any]) -> tuple[DictConfig, DeploySettings]:
    """Separate the ``deploy`` node from the experiment config; validate both.

    Raises
    ------
    ConfigError
        An unknown or mistyped ``deploy`` key, an experiment config mistake (see :func:`validate_config`), or more
        SuperNodes than clients.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(raw, dict)
    deploy_raw = raw.pop(DEPLOY_KEY, None) or {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DeploySettings), deploy_raw)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid deploy settings: {err}") from err
    settings = OmegaConf.to_object(merged)
    assert isinstance(settings, DeploySettings)
    experiment = validate_config(raw)
    if settings.supernodes is not None and not 1 <= settings.supernodes <= experiment.num_clients:
        raise ConfigError(
            f"deploy.supernodes must be between 1 and num_clients={experiment.num_clients}, got {settings.supernodes}"
        )
    if settings.startup_timeout_s <= 0:
        raise ConfigError(f"deploy.startup_timeout_s must be positive, got {settings.startup_timeout_s}")
    if settings.certificates is not None and not settings.tls:
        raise ConfigError("deploy.certificates is set but deploy.tls=false; drop one of them")
    return experiment, settings


# -- certificates -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS setup: the CA every client trusts, and the server's certificate and private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def generate_certificates(
    folder: Path, hosts: Sequence[str] = (LOOPBACK, "localhost"), valid_days: int = 7
) -> TlsFiles:
    """Make a throwaway CA and a server certificate for ``hosts``, signed by it, in ``folder``.

    Good for loopback and tests only: the CA's key is discarded, so nothing else can ever be signed by it, and no
    system trusts it. IP addresses go into the subject alternative name as IPs, names as DNS names, since TLS
    clients match the address they dialled against the SAN, not the common name.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("generate_certificates needs at least one host name or IP address")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdated a little so a clock a few seconds behind on a peer does not see a certificate "not yet valid".
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-kd throwaway CA")])
    no_usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **no_usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **no_usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created owner-only from the start, not chmod-ed after the key was already readable.
    fd = os.open(files.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    return files


def load_certificates(folder: Path | str) -> TlsFiles:
    """The TLS files in a user's ``folder`` (absolute paths); a missing one is a ``ValueError`` naming it."""
    folder = Path(folder).expanduser().resolve()
    files = TlsFiles(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
    missing = [path.name for path in asdict(files).values() if not path.is_file()]
    if missing:
        raise ValueError(
            f"certificate folder {folder} lacks {', '.join(missing)} (needs {CA_CERT}, {SERVER_CERT}, {SERVER_KEY})"
        )
    return files


# -- processes --------------------------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """``(ppid, state, start time)`` of a live process from ``/proc``, ``None`` if it is gone (or not Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
                tree.setdefault(stat[0], []).append(int(entry.name))
    return tree


def _descendants(pids: Sequence[int]) -> list[int]:
    tree, found, todo = _children(), [], list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _ancestors(pid: int) -> set[int]:
    found = {pid}
    while (stat := _proc_stat(pid)) is not None and stat[0] > 0 and stat[0] not in found:
        pid = stat[0]
        found.add(pid)
    return found


def _is_running(pid: int, start_time: int | None) -> bool:
    """Alive and still the same process (PIDs get reused); a zombie only waits to be reaped, it does not count."""
    stat = _proc_stat(pid)
    if stat is None:
        return False
    return stat[1] not in ("Z", "X") and (start_time is None or stat[2] == start_time)


def running_processes(run_dir: Path) -> list[int]:
    """Live processes whose command line or environment names ``run_dir``: what a deployment left behind there.

    Every Flower process of a deployment inherits an ``FLWR_HOME`` inside the run folder (and, with TLS, has
    certificate paths there on its command line), so this finds them independently of the launcher's bookkeeping.
    """
    needle = str(run_dir.resolve()).encode()
    ours = _ancestors(os.getpid())  # the caller's own command line may name the run folder
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in ours:
                continue
            for name in ("cmdline", "environ"):
                try:
                    if needle in (entry / name).read_bytes() and _is_running(int(entry.name), None):
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
    return found


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the launcher dies, even by SIGKILL."""
    os.setsid()  # own session: a Ctrl-C in the terminal reaches the launcher, which stops everything in order
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ProcessSupervisor:
    """Start the deployment's processes with their logs in the run folder; stop them all, and their children, by PID.

    Flower components start processes of their own (SuperExec, then one ServerApp or ClientApp process per task),
    some in new sessions, so a process group is not enough: the supervisor records every descendant it sees, with
    its start time so that a reused PID is never signalled.
    """

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: dict[int, int | None] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str], log_path: Path | None, cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``name``; stdout and stderr go to ``log_path`` (or a pipe when ``None``)."""
        log.info("Starting %s: %s", name, " ".join(command))
        output: IO[bytes] | int = subprocess.PIPE
        if log_path is not None:
            output = log_path.open("wb")
            self._logs.append(output)
        process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=not sys.platform.startswith("linux"),
        )
        self.processes[name] = process
        self._remember([process.pid])
        return process

    def _remember(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid not in self._seen and (stat := _proc_stat(pid)) is not None:
                self._seen[pid] = stat[2]

    def track(self) -> None:
        """Record the current descendants (call it now and then: a process whose parent died is lost to the tree)."""
        self._remember(_descendants([process.pid for process in self.processes.values()]))

    def running(self) -> list[int]:
        """PIDs this supervisor started or saw that are still running."""
        self.track()
        for process in self.processes.values():
            # Reap exited children at once: Flower's helpers watch their parent with `kill(pid, 0)`, which a
            # zombie still passes, so an unreaped SuperNode would keep its SuperExec alive until SIGKILL.
            process.poll()
        return [pid for pid, start in self._seen.items() if _is_running(pid, start)]

    def check(self, name: str, log_path: Path | None = None) -> None:
        """Raise :class:`DeploymentError` (with the end of its log) if ``name`` has exited."""
        code = self.processes[name].poll()
        if code is not None:
            tail = _tail(log_path) if log_path else ""
            raise DeploymentError(f"{name} exited with code {code}" + (f"; end of {log_path}:\n{tail}" if tail else ""))

    def stop(self, grace_s: float = 15.0) -> list[int]:
        """SIGTERM the started processes, newest first, then any descendant left; SIGKILL what still runs.

        Children get no signal of their own at first: SuperLink and SuperNodes stop their SuperExec, which stops
        its apps, and that order lets each flush its state. Whatever outlives its parent (an app in the middle of a
        task, say) gets its own SIGTERM; after ``grace_s`` in all, SIGKILL. Returns the PIDs that had to be killed.
        """
        self.track()
        roots = list(self.processes.values())
        for process in reversed(roots):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(process.poll() is None for process in roots) and time.monotonic() < deadline:
            time.sleep(0.2)
        # An orphan may watch a parent that is now a zombie nobody reaps (`kill(pid, 0)` still succeeds), and
        # would wait forever for it to go: tell it directly.
        for pid in self.running():
            self._signal(pid, signal.SIGTERM)
        deadline = max(deadline, time.monotonic() + 2.0)
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = self.running()
        for pid in killed:
            log.warning("Process %d did not stop on SIGTERM within %.0f s; killing it", pid, grace_s)
            self._signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0  # SIGKILL is not instant: the kernel still has to tear the process down
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
        for handle in self._logs:
            handle.close()
        return killed

    def _signal(self, pid: int, signum: int) -> None:
        if _is_running(pid, self._seen.get(pid)):  # never a PID that now belongs to another process
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``KeyboardInterrupt`` while deploying, so ``finally`` blocks stop the processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP while stopping: a second Ctrl-C must not leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- deployment -------------------------------------------------------------------------------------------------------
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


def superlink_command(port: int, tls: TlsFiles | None, database: Path) -> list[str]:
    """``flower-superlink`` serving its HTTP API (Fleet, Control, ServerAppIo) on 127.0.0.1:``port``."""
    command = ["flower-superlink", "--host", LOOPBACK, "--port", str(port), "--database", str(database)]
    # The app's dependencies are this venv's; a per-run `uv sync` would build a fresh environment.
    command.append("--disable-runtime-dependency-installation")
    if tls is None:
        return [*command, "--insecure"]
    return [
        *command,
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
    ]  # fmt: skip


def supernode_command(
    superlink: str, port: int, partition_id: int, num_partitions: int, tls: TlsFiles | None
) -> list[str]:
    """``flower-supernode`` for one partition; its runtime API (for its ClientApp processes) on 127.0.0.1:``port``.

    With TLS the SuperNode verifies the SuperLink against the CA, and its own runtime API is served with the same
    server certificate, so no traffic of the deployment is in clear text, not even on loopback.
    """
    command = [
        "flower-supernode",
        "--superlink", superlink,
        "--host", LOOPBACK,
        "--port", str(port),
        "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
    ]  # fmt: skip
    if tls is None:
        return [*command, "--insecure"]
    return [
        *command,
        "--root-certificates", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--ssl-ca-certfile", str(tls.ca_cert),
    ]  # fmt: skip


def probe(address: str, tls: TlsFiles | None, path: str = "/health", timeout: float = 2.0) -> int:
    """HTTP status of ``GET path`` on ``address``, over TLS verified against the CA when ``tls`` is given.

    Raises ``OSError`` (``URLError``, ``ssl.SSLError``, ``ConnectionError``) when no such answer comes, e.g. plain
    HTTP to a TLS server. Proxies are bypassed: this is loopback.
    """
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(tls.ca_cert))))
    opener = urllib.request.build_opener(*handlers)
    scheme = "https" if tls is not None else "http"
    try:
        with opener.open(f"{scheme}://{address}{path}", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:  # an answer all the same
        return int(err.code)


def online_nodes(env: dict[str, str], cwd: Path) -> list[int]:
    """Node ids the SuperLink reports online, through ``flwr supernode list`` on the default connection."""
    result = subprocess.run(
        ["flwr", "supernode", "list", "--format", "json"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    start = result.stdout.find("{")
    if result.returncode != 0 or start < 0:
        return []
    with contextlib.suppress(json.JSONDecodeError):
        nodes = json.loads(result.stdout[start:]).get("nodes", [])
        return [int(node["node-id"]) for node in nodes if node.get("status") == "online"]
    return []


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


def _stream(process: subprocess.Popen[bytes], log_path: Path, echo: bool) -> threading.Thread:
    """Copy a process's output to its log file (and to our stdout) line by line, as it comes."""

    def pump() -> None:
        assert process.stdout is not None
        with log_path.open("wb") as handle:
            for line in iter(process.stdout.readline, b""):
                handle.write(line)
                handle.flush()
                if echo:
                    sys.stdout.write(line.decode(errors="replace"))
                    sys.stdout.flush()

    thread = threading.Thread(target=pump, name="flwr-run-output", daemon=True)
    thread.start()
    return thread


class LoopbackDeployment:
    """One SuperLink and its SuperNodes on 127.0.0.1, started and stopped as a unit.

    Parameters
    ----------
    deploy_dir : Path
        Folder for certificates, the SuperLink database, one log and one ``FLWR_HOME`` per component.
    cli_home : Path
        ``FLWR_HOME`` of the Flower CLI, where the connection ``config.toml`` goes.
    num_partitions : int
        Partitions of the federation; the run waits for one online SuperNode per partition.
    settings : DeploySettings
        How many SuperNodes to start here, TLS, timeouts.
    """

    def __init__(self, deploy_dir: Path, cli_home: Path, num_partitions: int, settings: DeploySettings) -> None:
        self.deploy_dir = deploy_dir
        self.cli_home = cli_home
        self.num_partitions = num_partitions
        self.settings = settings
        self.local = num_partitions if settings.supernodes is None else settings.supernodes
        self.tls: TlsFiles | None = None
        if settings.tls:
            self.tls = (
                load_certificates(settings.certificates)
                if settings.certificates
                else generate_certificates(deploy_dir / "certs")
            )
        self.superlink = f"{LOOPBACK}:{free_port()}"
        self.supernodes = tuple(f"{LOOPBACK}:{free_port()}" for _ in range(self.local))
        self.superlink_log = deploy_dir / "superlink.log"
        self.supervisor = ProcessSupervisor()
        write_connection(cli_home, self.superlink, self.tls)

    def env(self, home: Path) -> dict[str, str]:
        """A component's environment: its own ``FLWR_HOME``, and no proxy between it and loopback."""
        home.mkdir(parents=True, exist_ok=True)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), LOOPBACK, "localhost"]))
        return {**flower_env(home), "NO_PROXY": no_proxy, "no_proxy": no_proxy}

    def start(self) -> Endpoints:
        """Start the SuperLink and the local SuperNodes; return once all partitions' SuperNodes are online."""
        started = time.monotonic()
        deadline = started + self.settings.startup_timeout_s
        port = int(self.superlink.rsplit(":", 1)[1])
        self.supervisor.start(
            "superlink",
            superlink_command(port, self.tls, self.deploy_dir / "superlink.db"),
            self.env(self.deploy_dir / "superlink"),
            self.superlink_log,
            self.deploy_dir,
        )
        # SuperNodes start at the same time: both sides need seconds to import, and a SuperNode retries until the
        # SuperLink answers.
        for partition_id, address in enumerate(self.supernodes):
            name = f"supernode-{partition_id}"
            self.supervisor.start(
                name,
                supernode_command(
                    self.superlink, int(address.rsplit(":", 1)[1]), partition_id, self.num_partitions, self.tls
                ),
                self.env(self.deploy_dir / name),
                self.deploy_dir / f"{name}.log",
                self.deploy_dir,
            )
        for partition_id in range(self.local, self.num_partitions):
            command = supernode_command(self.superlink, free_port(), partition_id, self.num_partitions, self.tls)
            shown = " ".join(f"'{arg}'" if " " in arg else arg for arg in command)
            print(f"Waiting for partition {partition_id}; start its SuperNode with:\n  {shown}", flush=True)

        def superlink_up() -> bool:
            with contextlib.suppress(OSError):
                return probe(self.superlink, self.tls) == 200
            return False

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

    def check(self) -> None:
        """Raise :class:`DeploymentError` if the SuperLink or a local SuperNode has exited; note new children."""
        self.supervisor.check("superlink", self.superlink_log)
        for partition_id in range(self.local):
            name = f"supernode-{partition_id}"
            self.supervisor.check(name, self.deploy_dir / f"{name}.log")
        self.supervisor.track()

    def submit(self, app_dir: Path, echo: bool) -> int:
        """``flwr run`` the app on this deployment and stream its log; return the CLI's exit code."""
        run = self.supervisor.start(
            "flwr-run",
            ["flwr", "run", str(app_dir), CONNECTION, "--stream"],
            self.env(self.cli_home),
            None,
            self.cli_home,
        )
        pump = _stream(run, self.deploy_dir / "flwr-run.log", echo)
        timeout = self.settings.run_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while run.poll() is None:
            self.check()
            if deadline is not None and time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish within {timeout} s")
            time.sleep(0.5)
        pump.join(timeout=10.0)
        return int(run.returncode)

    def stop(self) -> None:
        """Stop every process of the deployment (see :meth:`ProcessSupervisor.stop`), immune to a second Ctrl-C."""
        with _uninterruptible():
            killed = self.supervisor.stop()
        if killed:
            log.warning("Killed %d process(es) that ignored SIGTERM: %s", len(killed), killed)


def run_deployment(
    cfg: DictConfig,
    out_dir: Path,
    settings: DeploySettings | None = None,
    on_ready: Callable[[Endpoints], None] | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Run one validated experiment on a loopback Flower deployment into ``out_dir``; return its per-round metrics.

    The run folder gets what ``fl-kd-sim`` writes (config, metrics, summary, plots, ``server.pt``), plus
    ``flower_app/`` (the app ``flwr run`` packs), ``.flwr/config.toml`` (the CLI connection) and ``deploy/``
    (certificates, SuperLink database, one log per process, ``flwr-run.log``).

    Parameters
    ----------
    cfg : DictConfig
        Experiment config validated by :func:`validate_config` (no ``deploy`` node).
    out_dir : Path
        Run folder.
    settings : DeploySettings | None (default: None)
        Deployment settings; ``None`` takes the defaults (TLS, one SuperNode per client).
    on_ready : Callable[[Endpoints], None] | None (default: None)
        Called once the SuperLink answers and all SuperNodes are online, before the run is submitted.
    echo : bool (default: True)
        Copy the streamed ServerApp log to stdout.

    Raises
    ------
    DeploymentError
        A component exited early, a wait timed out, or the run did not record all its rounds.
    """
    settings = settings or DeploySettings()
    experiment = reference_config(cfg)
    out_dir = out_dir.resolve()
    deploy_dir = out_dir / "deploy"
    deploy_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (deploy_dir / "settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    app_dir = write_app(
        out_dir / "flower_app",
        SERVERAPP,
        CLIENTAPP,
        {"fl-kd-config": experiment.to_json(), "output-dir": str(out_dir)},
    )
    started = time.monotonic()
    deployment = LoopbackDeployment(deploy_dir, out_dir / ".flwr", experiment.num_clients, settings)
    with _termination_as_interrupt():
        try:
            endpoints = deployment.start()
            if on_ready is not None:
                on_ready(endpoints)
            code = deployment.submit(app_dir, echo)
        finally:
            deployment.stop()
    log.info("Deployment finished in %.1f s", time.monotonic() - started)

    rows = read_metrics(out_dir) if (out_dir / "metrics.jsonl").exists() else []
    if code != 0 or len(rows) != experiment.rounds:
        raise DeploymentError(
            f"`flwr run` ended with exit code {code} after {len(rows)} of {experiment.rounds} rounds; "
            f"see {deploy_dir / 'flwr-run.log'} and {deploy_dir / 'superlink.log'}"
        )
    return rows


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="deploy")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, deploy on loopback, summarise."""
    experiment, settings = split_deploy_settings(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rows = run_deployment(experiment, out_dir, settings)
    except KeyboardInterrupt as err:
        print(f"Interrupted ({err or 'Ctrl-C'}); every process of the deployment was stopped.", file=sys.stderr)
        raise SystemExit(130) from None
    print_summary_table(rows, title=f"fl-kd {experiment.strategy.name} on {experiment.dataset.name} (deployment)")
    summary = summarise(rows, wall_seconds=sum(float(row["wall_seconds"]) for row in rows))
    print(f"server accuracy {summary.get('final_server_acc', float('nan')):.4f}; run folder: {out_dir}")


if __name__ == "__main__":
    main()
