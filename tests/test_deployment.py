"""A real Flower deployment on loopback (SuperLink + SuperNodes over TLS) against the in-process runner.

Besides the end-to-end run, the command lines and the per-round console output are tested on their own; the
certificates, the settings and the process supervision have their own test modules (``test_deploy_*``,
``test_processes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fl_kd.runtime import SimulationConfig
from fl_kd.simulations import flower_launcher
from fl_kd.simulations.deploy import RoundTail, run_deployment, split_deploy_settings
from fl_kd.simulations.flower_launcher import flower_env, free_port
from fl_kd.simulations.health import probe
from fl_kd.simulations.loopback import (
    Endpoints,
    running_processes,
    superlink_command,
    supernode_command,
    write_connection,
)
from fl_kd.simulations.processes import identify, is_running
from fl_kd.simulations.run import run_experiment
from fl_kd.simulations.tls import TlsFiles


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="deploy", overrides=list(overrides))


# -- command lines and console ----------------------------------------------------------------------------------------
def test_insecure_mode_is_explicit_everywhere(tmp_path: Path) -> None:
    link = superlink_command(9093, None, tmp_path / "db")
    node = supernode_command("127.0.0.1:9093", 9100, 1, 3, None)
    assert "--insecure" in link and not any(arg.startswith("--ssl") for arg in link)
    assert "--insecure" in node and "--root-certificates" not in node
    assert node[node.index("--node-config") + 1] == "partition-id=1 num-partitions=3"
    assert "insecure = true" in write_connection(tmp_path / "home", "127.0.0.1:9093", None).read_text()


def test_with_tls_every_server_serves_https_and_every_client_trusts_the_ca(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key")
    link = superlink_command(9093, tls, tmp_path / "db")
    node = supernode_command("127.0.0.1:9093", 9100, 1, 3, tls)
    for command in (link, node):
        assert "--insecure" not in command
        assert command[command.index("--ssl-certfile") + 1] == str(tls.server_cert)
        assert command[command.index("--ssl-keyfile") + 1] == str(tls.server_key)
    assert node[node.index("--root-certificates") + 1] == str(tls.ca_cert)  # the SuperNode verifies the SuperLink
    connection = write_connection(tmp_path / "home", "127.0.0.1:9093", tls).read_text()
    assert f'root-certificates = "{tls.ca_cert}"' in connection and "insecure" not in connection


def test_a_supernode_gives_up_on_a_superlink_that_does_not_answer(tmp_path: Path) -> None:
    # Started by hand for a partition the launcher waits for, it retried forever once the launcher had ended.
    command = supernode_command(f"127.0.0.1:{free_port()}", free_port(), 0, 1, None, max_wait_s=3)
    assert command[command.index("--max-wait-time") + 1] == "3"
    assert "--max-wait-time" not in supernode_command("127.0.0.1:9093", 9100, 0, 1, None)
    with (tmp_path / "supernode.log").open("w") as log:
        node = subprocess.Popen(
            command, env=flower_env(tmp_path / "home"), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert node.wait(timeout=90) != 0  # the node itself: its SuperExec child may outlive it for a moment
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
    assert "could not establish a connection to the SuperLink" in (tmp_path / "supernode.log").read_text()


def test_round_tail_prints_each_finished_round_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "metrics.jsonl"
    rounds = RoundTail(path)
    rounds.poll()  # no file yet
    row = {"round": 1, "server_acc": 0.5, "client_acc_mean": 0.25, "uplink_bytes": 2000, "wall_seconds": 3.0}
    path.write_text(json.dumps(row) + "\n" + '{"round": 2, "serv')  # round 2 is still being written
    rounds.poll()
    rounds.poll()
    assert capsys.readouterr().out == "round 1 | server 0.5000 | clients 0.2500 | up 2.0 kB | 3.00 s\n"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "round": 2}) + "\n")
    rounds.poll()
    assert capsys.readouterr().out.startswith("round 2 | server 0.5000")
    assert [row["round"] for row in rounds.rows] == [1, 2]


# -- the deployment --------------------------------------------------------------------------------------------------
# Each message starts a fresh ClientApp process (torch import, data load) and SuperNodes and the Grid poll every 3 s,
# so a round costs tens of seconds on 2 cores: two clients and one round (~150 s at load 8, the simulation test's
# 3 clients and 2 rounds would take ~4 min there).
TINY = (
    "num_clients=2",
    "transfer.labelled=60",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "strategy.rounds=1",
    "strategy.server_epochs=1",
    "partition.min_size=20",
    "seed=3",
)


@pytest.mark.slow
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
    same = dataclasses.replace(experiment, simulation=SimulationConfig(backend="inprocess"))  # fl-kd-sim's runtime
    inprocess = run_experiment(same, tmp_path / "inprocess")

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]

    assert len(deployed) == 1 and strip(deployed) == strip(inprocess)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "server.pt"):
        assert (run_dir / name).is_file(), f"{name} missing"

    # TLS was used end to end: status 200 over verified TLS, the CLI connection trusts our CA, the servers say https.
    assert seen["status"] == [200, 200, 200]
    assert len(seen["node_ids"]) == 2  # type: ignore[arg-type]
    # With authentication the ServerApp took each partition's node from the registration, not from the nodes' word.
    said = "Each partition is held by the node registered for it: "
    line = next(line for line in (run_dir / "server.log").read_text().splitlines() if said in line)
    assert {int(node_id) for node_id in line.split(said)[1].split(",")} == set(seen["node_ids"])  # type: ignore[call-overload]
    connection = (run_dir / ".flwr" / "config.toml").read_text()
    assert 'root-certificates = "' in connection and "insecure" not in connection
    for log_name in ("superlink.log", "supernode-0.log", "supernode-1.log"):
        assert "running on https://127.0.0.1:" in (run_dir / "deploy" / log_name).read_text(), log_name

    # SuperLink, 2 SuperNodes and their SuperExecs were running; none of them, nor anything else, is left.
    started = seen["processes"]
    assert isinstance(started, list) and len(started) >= 6
    assert [pid for pid in started if (proc := identify(pid)) is not None and is_running(proc)] == []
    assert running_processes(run_dir) == []


def test_free_port_never_hands_out_a_port_twice_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink's port is chosen before it listens, so the OS may offer it again: a SuperNode once got it."""
    offered = iter([47001, 47001, 47002])

    class Socket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *args: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(flower_launcher.socket, "socket", Socket)
    assert [free_port(), free_port()] == [47001, 47002]
