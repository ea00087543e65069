"""Is a deployment's component up yet: the SuperLink's health endpoint and the SuperNodes it lists online.

The launcher polls these until a deadline; an answer that waiting cannot change (a certificate that does not
verify) ends the wait at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from fl_kd.simulations.tls import TlsFiles

log = logging.getLogger(__name__)


class DeploymentError(RuntimeError):
    """A component of the deployment failed to start, or the run did not finish all its rounds."""


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


def answers(address: str, tls: TlsFiles | None) -> bool:
    """Whether the server on ``address`` answers its health check yet (not yet: it may still be starting).

    Raises ``DeploymentError`` at once when its certificate does not verify against the CA: waiting would not change
    that, and every SuperNode's handshake would fail the same way until the start-up timeout.
    """
    try:
        return probe(address, tls) == 200
    except (urllib.error.URLError, ssl.SSLCertVerificationError) as err:
        reason = getattr(err, "reason", err)  # urllib wraps the TLS error
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DeploymentError(f"the certificate of the server on {address} does not verify: {reason}") from err
        return False
    except OSError:
        return False


def online_nodes(env: dict[str, str], cwd: Path, timeout: float = 60.0) -> list[int]:
    """Node ids the SuperLink reports online, through ``flwr supernode list`` on the default connection.

    Callers poll this until a deadline, so a listing that fails or takes longer than ``timeout`` seconds (the CLI
    competes for the CPU with the SuperNodes it asks about) counts as "none online yet", never as an error.
    """
    try:
        result = subprocess.run(
            ["flwr", "supernode", "list", "--format", "json"],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        log.warning("`flwr supernode list` gave no answer within %.0f s; asking again later", timeout)
        return []
    start = result.stdout.find("{")
    if result.returncode != 0 or start < 0:
        return []
    with contextlib.suppress(json.JSONDecodeError):
        nodes = json.loads(result.stdout[start:]).get("nodes", [])
        return [int(node["node-id"]) for node in nodes if node.get("status") == "online"]
    return []
