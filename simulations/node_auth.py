"""SuperNode authentication keys: make a node's key pair, and register its public key with the SuperLink.

With ``flower-superlink --enable-supernode-auth`` (flwr 1.42; TLS required) the SuperLink accepts only SuperNodes
whose public key was registered through its Control API (``flwr supernode register``); every request of a SuperNode
is signed with its private key (``flower-supernode --auth-supernode-private-key``). Registration also gives the node
its id, which stays the same when the node reconnects. Keys are EC keys on a NIST curve in OpenSSH format, what
``ssh-keygen -t ecdsa -b 384 -N "" -f node0`` makes; this module makes the same with ``cryptography``, so no
``ssh-keygen`` is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class RegistrationError(RuntimeError):
    """``flwr supernode register`` did not register a key; the message has the CLI's output."""


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's key pair: ``private`` (owner-only, stays on the node) and ``public`` (registered)."""

    private: Path
    public: Path


def make_node_keys(folder: Path, name: str) -> NodeKeys:
    """Write ``<folder>/<name>`` (private key, mode 0600) and ``<folder>/<name>.pub``, OpenSSH ECDSA P-384."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(folder / name, folder / f"{name}.pub")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    keys.private.unlink(missing_ok=True)
    # Created owner-only from the start, not chmod-ed after the key was already readable.
    fd = os.open(keys.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    keys.public.write_bytes(public + f" {name}\n".encode())
    return keys


def register_command(public_key: Path, connection: str) -> list[str]:
    """The Flower CLI command that registers ``public_key`` with the SuperLink of ``connection``."""
    return ["flwr", "supernode", "register", str(public_key), connection, "--format", "json"]


def register_nodes(
    public_keys: list[Path], connection: str, env: dict[str, str], cwd: Path, timeout: float = 120.0
) -> list[int]:
    """Register every key (the CLI processes run at once: each spends ~2 s importing Flower); return the node ids.

    Raises
    ------
    RegistrationError
        A key was refused (e.g. already registered) or the SuperLink did not answer; names the key.
    """
    runs = [
        (key, subprocess.Popen(register_command(key, connection), env=env, cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for key in public_keys
    ]  # fmt: skip
    node_ids: list[int] = []
    try:
        for key, run in runs:
            output, _ = run.communicate(timeout=timeout)
            node_ids.append(_node_id(key, run.returncode, output))
    finally:
        for _, run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    return node_ids


def _node_id(key: Path, code: int, output: str) -> int:
    start = output.find("{")
    if code == 0 and start >= 0:
        try:
            answer = json.loads(output[start:])
            if answer.get("success"):
                return int(answer["node-id"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    raise RegistrationError(f"`flwr supernode register {key}` failed (exit code {code}):\n{output.strip()}")
