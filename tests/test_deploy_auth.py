"""SuperNode authentication and node configs of the loopback deployment, without starting Flower.

The keys must be what flwr 1.42 itself reads (an OpenSSH EC private key for ``flower-supernode``, an OpenSSH NIST EC
public key for ``flwr supernode register``); the node config string must parse back, through Flower's own parser, to
the mapping the ClientApp reads. The refusal of an unregistered SuperNode is tested on a real deployment in
``tests/test_deployment_faults.py``.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args

from fl_kd.config import ConfigError
from fl_kd.data.node_local import node_spec
from fl_kd.secret import SERVER_KEY_ENV
from fl_kd.simulations import loopback
from fl_kd.simulations.deploy_settings import DeploySettings
from fl_kd.simulations.health import DeploymentError
from fl_kd.simulations.loopback import (
    LoopbackDeployment,
    node_config_arg,
    superlink_command,
    supernode_command,
)
from fl_kd.simulations.node_auth import RegistrationError, _node_id, make_node_keys, register_command
from fl_kd.simulations.node_data import write_partition_folders
from fl_kd.simulations.processes import ProcessSupervisor
from fl_kd.simulations.tls import TlsFiles
from tests.kd_configs import tiny_config


def test_node_keys_are_what_flower_reads(tmp_path: Path) -> None:
    keys = make_node_keys(tmp_path / "keys", "supernode-0")
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600
    private = load_ssh_private_key(keys.private.read_bytes(), None)  # as flower-supernode loads it
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert try_load_public_key(keys.public)  # as `flwr supernode register` loads it
    first = keys.public.read_bytes()
    make_node_keys(tmp_path / "keys", "supernode-0")  # a new pair replaces the old one
    assert keys.public.read_bytes() != first


def test_registration_answer_gives_the_node_id_or_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / "n.pub"
    assert register_command(key, "fl-kd") == ["flwr", "supernode", "register", str(key), "fl-kd", "--format", "json"]
    assert _node_id(key, 0, '✅ SuperNode 42 registered.\n{"success": true, "node-id": 42}') == 42
    with pytest.raises(RegistrationError, match="exit code 1"):
        _node_id(key, 1, '{"success": false, "error-message": "Public key already in use"}')


@pytest.mark.parametrize(
    "failure",
    [RegistrationError("Public key already in use"), subprocess.TimeoutExpired(["flwr", "supernode"], 120.0)],
    ids=["refused", "hung"],
)
def test_a_failed_registration_ends_the_start_up_as_a_deployment_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """No SuperNode starts with keys the SuperLink never accepted: the start-up stops at once, naming the step."""
    started: list[str] = []
    monkeypatch.setattr(ProcessSupervisor, "start", lambda self, name, *args: started.append(name))
    monkeypatch.setattr(loopback, "answers", lambda address, tls: True)  # the SuperLink is up

    def register(*args: object, **kwargs: object) -> list[int]:
        raise failure

    monkeypatch.setattr(loopback, "register_nodes", register)
    deployment = LoopbackDeployment(tmp_path / "deploy", tmp_path / ".flwr", 2, DeploySettings(startup_timeout_s=5))
    assert deployment.auth
    with pytest.raises(DeploymentError, match="registering the SuperNodes' keys failed: .*(in use|timed out)"):
        deployment.start()
    assert started == ["superlink"] and not deployment.registered


def test_auth_switches_on_the_superlink_and_gives_each_node_its_key(tmp_path: Path) -> None:
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.pem", tmp_path / "server.key")
    assert "--enable-supernode-auth" in superlink_command(9093, tls, tmp_path / "db", auth=True)
    assert "--enable-supernode-auth" not in superlink_command(9093, tls, tmp_path / "db")
    node = supernode_command("127.0.0.1:9093", 9100, 1, 3, tls, private_key=tmp_path / "k")
    assert node[node.index("--auth-supernode-private-key") + 1] == str(tmp_path / "k")


def test_auth_follows_tls_unless_set() -> None:
    assert DeploySettings().authenticate and not DeploySettings(tls=False).authenticate
    assert not DeploySettings(auth=False).authenticate
    with pytest.raises(ConfigError, match="deploy.auth=true needs TLS"):
        DeploySettings(tls=False, auth=True)
    with pytest.raises(ConfigError, match="deploy.node_data='disk' is not one of folder, dataset"):
        DeploySettings(node_data="disk")


def test_node_config_string_parses_back_through_flower(tmp_path: Path) -> None:
    """What the launcher passes as --node-config is what the ClientApp's node_spec reads."""
    data_dir = tmp_path / "client 0"  # a space in the path must survive the quoting
    config = {"partition-id": 0, "num-partitions": 3, "data-dir": str(data_dir), "device-tier": "low"}
    parsed = parse_config_args([node_config_arg(config)])
    assert parsed == config
    spec = node_spec(parsed)
    assert (spec.client_id, spec.data_dir, spec.device_tier) == (0, data_dir, "low")
    node = supernode_command("127.0.0.1:9093", 9100, 2, 3, None, {"dataset": "digits"})
    assert parse_config_args([node[node.index("--node-config") + 1]]) == {
        "partition-id": 2,
        "num-partitions": 3,
        "dataset": "digits",
    }


def test_partition_folders_hold_each_client_and_name_its_tier(tmp_path: Path) -> None:
    cfg = tiny_config()
    configs = write_partition_folders(cfg, tmp_path)
    assert len(configs) == cfg.num_clients
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"client-{i}" for i in range(cfg.num_clients)]
    tiers = {tier.name for tier in cfg.device_profile.tiers}
    for client_id, config in enumerate(configs):
        assert Path(str(config["data-dir"])) == (tmp_path / f"client-{client_id}").resolve()
        assert config["device-tier"] in tiers
        assert sorted(p.name for p in Path(str(config["data-dir"])).iterdir()) == ["x_train.npy", "y_train.npy"]


def test_the_supernodes_never_get_the_servers_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink (and the ServerApp it starts) inherits FL_KD_SERVER_KEY; a SuperNode and its ClientApps do not."""
    monkeypatch.setenv(SERVER_KEY_ENV, "the server's alone")
    started: dict[str, dict[str, str]] = {}
    monkeypatch.setattr(ProcessSupervisor, "start", lambda self, name, command, env, *args: started.update({name: env}))
    deployment = LoopbackDeployment(tmp_path / "deploy", tmp_path / ".flwr", 2, DeploySettings(tls=False))
    deployment.start_supernode("supernode-0", 0)
    assert SERVER_KEY_ENV not in started["supernode-0"]
    assert deployment.env(tmp_path / "superlink")[SERVER_KEY_ENV] == "the server's alone"
