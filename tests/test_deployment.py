"""A real Flower deployment on loopback (SuperLink + SuperNodes over TLS) against the in-process runner.

Besides the end-to-end run, the pieces that make it safe are tested on their own: the throwaway certificates in a
real TLS handshake, the deploy settings, the command lines, and the supervisor that stops every process it started.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fl_kd.simulations.config import ConfigError
from fl_kd.simulations.deploy import (
    DeploySettings,
    Endpoints,
    ProcessSupervisor,
    TlsFiles,
    generate_certificates,
    load_certificates,
    probe,
    run_deployment,
    running_processes,
    split_deploy_settings,
    superlink_command,
    supernode_command,
    write_connection,
)
from fl_kd.simulations.run import run_experiment


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="deploy", overrides=list(overrides))


# -- certificates ---------------------------------------------------------------------------------------------------
def _handshake(tls: TlsFiles, trusted_ca: Path, server_hostname: str) -> str:
    """Serve one TLS connection with ``tls``'s server certificate; connect trusting ``trusted_ca``; return the reply."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        # The server side fails on purpose when the client rejects its certificate.
        with contextlib.suppress(OSError), server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.sendall(b"hello over tls")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls_conn:
                return tls_conn.recv(64).decode()
    finally:
        thread.join(timeout=5)
        listener.close()


def test_throwaway_certificates_pass_strict_verification_for_ip_and_name(tmp_path: Path) -> None:
    tls = generate_certificates(tmp_path / "certs")
    assert _handshake(tls, tls.ca_cert, "127.0.0.1") == "hello over tls"
    assert _handshake(tls, tls.ca_cert, "localhost") == "hello over tls"
    assert tls.server_key.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"


def test_certificates_from_another_ca_or_for_another_host_are_rejected(tmp_path: Path) -> None:
    tls = generate_certificates(tmp_path / "ours")
    other = generate_certificates(tmp_path / "theirs")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, other.ca_cert, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tls, tls.ca_cert, "example.org")


def test_load_certificates_names_the_missing_file(tmp_path: Path) -> None:
    generate_certificates(tmp_path)
    assert load_certificates(tmp_path).ca_cert == (tmp_path / "ca.crt").resolve()
    (tmp_path / "server.key").unlink()
    with pytest.raises(ValueError, match=r"lacks server\.key"):
        load_certificates(tmp_path)


# -- settings and command lines ---------------------------------------------------------------------------------------
def test_deploy_settings_default_and_from_plus_overrides() -> None:
    experiment, settings = split_deploy_settings(_compose("num_clients=3"))
    assert settings == DeploySettings() and settings.tls and settings.supernodes is None
    assert "deploy" not in experiment and experiment.num_clients == 3
    _, settings = split_deploy_settings(_compose("num_clients=3", "deploy.supernodes=2", "deploy.tls=false"))
    assert settings.supernodes == 2 and settings.tls is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+deploy.tsl=false",), "tsl"),  # misspelt key
        (("deploy.supernodes=4",), "supernodes"),  # more SuperNodes than clients
        (("deploy.supernodes=0",), "supernodes"),
        (("deploy.tls=false", "deploy.certificates=/etc/certs"), "certificates"),
        (("deploy.startup_timeout_s=0",), "startup_timeout_s"),
        (("strategy.rounds=0",), "rounds"),  # the experiment config is still validated
    ],
)
def test_deploy_setting_mistakes_are_errors(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_deploy_settings(_compose("num_clients=3", *overrides))


def test_insecure_mode_is_explicit_everywhere(tmp_path: Path) -> None:
    link = superlink_command(9093, None, tmp_path / "db")
    node = supernode_command("127.0.0.1:9093", 9100, 1, 3, None)
    assert "--insecure" in link and not any(arg.startswith("--ssl") for arg in link)
    assert "--insecure" in node and "--root-certificates" not in node
    assert node[node.index("--node-config") + 1] == "partition-id=1 num-partitions=3"
    assert "insecure = true" in write_connection(tmp_path / "home", "127.0.0.1:9093", None).read_text()


# -- process supervision ----------------------------------------------------------------------------------------------
# A parent that stops on SIGTERM, with a child in a session of its own that ignores SIGTERM (as a hung app would).
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
)
STUBBORN_CHILD = f"""
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {IGNORE_SIGTERM!r}], start_new_session=True, stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


def test_supervisor_stops_children_that_left_the_session_and_ignore_sigterm(tmp_path: Path) -> None:
    supervisor = ProcessSupervisor()
    parent = supervisor.start("parent", [sys.executable, "-c", STUBBORN_CHILD], {}, tmp_path / "parent.log", tmp_path)
    deadline = time.monotonic() + 20
    while not (tmp_path / "parent.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((tmp_path / "parent.log").read_text().split()[0])
    assert set(supervisor.running()) == {parent.pid, child}
    killed = supervisor.stop(grace_s=1.0)
    assert killed == [child]  # the parent stopped on SIGTERM; the child needed SIGKILL
    assert supervisor.running() == []
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (which nothing here may reap: its parent was killed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# -- the deployment --------------------------------------------------------------------------------------------------
# Each message starts a fresh ClientApp process (torch import, data load) and SuperNodes and the Grid poll every 3 s,
# so a round costs tens of seconds on 2 cores: two clients and one round (~150 s at load 8, the simulation test's
# 3 clients and 2 rounds would take ~4 min there).
TINY = (
    "num_clients=2",
    "transfer_size=60",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "strategy.rounds=1",
    "strategy.server_epochs=1",
    "partition.min_size=20",
    "seed=3",
)


def test_loopback_deployment_over_tls_matches_the_in_process_runner(tmp_path: Path) -> None:
    run_dir = tmp_path / "deploy"
    experiment, settings = split_deploy_settings(_compose(*TINY))
    seen: dict[str, object] = {}

    def on_ready(endpoints: Endpoints) -> None:
        assert endpoints.tls is not None
        seen["processes"] = running_processes(run_dir)
        seen["node_ids"] = endpoints.node_ids
        # Verified against our CA, the SuperLink and every SuperNode runtime API answer over TLS ...
        seen["status"] = [probe(address, endpoints.tls) for address in (endpoints.superlink, *endpoints.supernodes)]
        # ... plain HTTP gets no answer (the server drops it, or says nothing at all) ...
        host, port = endpoints.superlink.split(":")
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/health")
            plain.getresponse()
        plain.close()
        # ... and a client that does not trust our CA refuses the SuperLink.
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                ssl.create_default_context().wrap_socket(raw, server_hostname=host).close()

    deployed = run_deployment(experiment, run_dir, settings, on_ready=on_ready, echo=False)
    inprocess = run_experiment(
        split_deploy_settings(_compose(*TINY, "simulation.backend=inprocess"))[0], tmp_path / "inprocess"
    )

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]

    assert len(deployed) == 1 and strip(deployed) == strip(inprocess)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "server.pt"):
        assert (run_dir / name).is_file(), f"{name} missing"

    # TLS was used end to end: status 200 over verified TLS, the CLI connection trusts our CA, the servers say https.
    assert seen["status"] == [200, 200, 200]
    assert len(seen["node_ids"]) == 2  # type: ignore[arg-type]
    connection = (run_dir / ".flwr" / "config.toml").read_text()
    assert 'root-certificates = "' in connection and "insecure" not in connection
    for log_name in ("superlink.log", "supernode-0.log", "supernode-1.log"):
        assert "running on https://127.0.0.1:" in (run_dir / "deploy" / log_name).read_text(), log_name

    # SuperLink, 2 SuperNodes and their SuperExecs were running; none of them, nor anything else, is left.
    started = seen["processes"]
    assert isinstance(started, list) and len(started) >= 6
    assert [pid for pid in started if _alive(pid)] == []
    assert running_processes(run_dir) == []
