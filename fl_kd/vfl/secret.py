"""The label party's secret: the one value every label-hiding random draw of its defence comes from.

A defence's keys and noise (``randomised_label``'s per-sample fake labels, the Gaussian, Laplace, Marvell and
CoAE-noise gradient noise, MID's sampling noise) hide the labels only while no feature party can recompute them.
Every party receives the whole run config, seeds included, so those draws must not follow from it: they follow
from a secret that only the label party's node holds, read by :func:`label_party_secret` from

1. its node config, ``label-secret-file=<path>`` (a file only that node can read; its bytes are the secret) or
   ``label-secret=<value>`` (deployment: ``flower-supernode --node-config``);
2. otherwise its own private data: a digest of its training labels and its own feature columns. A simulated
   SuperNode has no node config of its own beyond its partition, so this is where a simulation's secret comes from;
   it is deterministic (same config and seed, same numbers, in-process and over Flower alike) and needs every
   training label exactly, the very thing the defence hides, to recompute.

The secret never travels: the label party's ClientApp keeps it in its own ``context.state``; no message and no run
config carries it or anything it follows from. A defence's explicit ``seed`` parameter (in the run config) only
picks a stream of draws under the secret (:func:`defence_seed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from fl_kd.secret import secret_of, tensor_bytes

#: Node-config key of a file holding the label party's secret (its bytes, as they are).
LABEL_SECRET_FILE = "label-secret-file"
#: Node-config key of the label party's secret itself (any string or number).
LABEL_SECRET = "label-secret"


def data_secret(labels: Tensor, features: Tensor | None = None) -> int:
    """The secret of a label party whose node config names none: a digest of its labels ``(N,)`` and features.

    Only the label party holds these (its own feature columns ``(N, F_a)``, when it has any, add to the labels).
    """
    parts = [b"fl-kd label party data", tensor_bytes(labels)]
    if features is not None:
        parts.append(tensor_bytes(features))
    return secret_of(*parts)


def label_party_secret(node_config: Mapping[str, Any], labels: Tensor, features: Tensor | None = None) -> int:
    """The label party's secret: from the file or value its node config names, else :func:`data_secret`.

    Raises
    ------
    ValueError
        When ``label-secret-file`` names a file that cannot be read or is empty, or ``label-secret`` is empty.
    """
    if LABEL_SECRET_FILE in node_config:
        path = Path(str(node_config[LABEL_SECRET_FILE])).expanduser()
        try:
            key = path.read_bytes()
        except OSError as err:
            raise ValueError(f"{LABEL_SECRET_FILE} {path}: {err.strerror or err}") from None
        if not key.strip():
            raise ValueError(f"{LABEL_SECRET_FILE} {path} is empty")
        return secret_of(b"fl-kd label party key", key)
    if LABEL_SECRET in node_config:
        value = str(node_config[LABEL_SECRET])
        if not value:
            raise ValueError(f"{LABEL_SECRET} is empty")
        return secret_of(b"fl-kd label party key", value.encode())
    return data_secret(labels, features)


def defence_seed(secret: int | None, seed: int, stream: str, explicit: int | None = None) -> int:
    """The seed of one of a defence's random streams.

    Parameters
    ----------
    secret : int | None
        The label party's secret; ``None`` only for a defence used on its own (unit tests), which then draws from
        ``explicit`` or ``seed`` as it always did, with nothing secret about it.
    seed : int
        The run's seed (public: every party knows it). Under a secret it still picks the draw, so that every seed of
        a run is a draw of its own even where the data, and so a secret drawn from it, is the same.
    stream : str
        Which stream (the defence's name and purpose), so that two defences never share draws.
    explicit : int | None (default: None)
        A seed the config gives the defence; under a secret it only picks another stream.
    """
    if secret is None:
        return seed if explicit is None else explicit
    return secret_of(
        b"fl-kd defence stream",
        secret.to_bytes(8, "little"),
        str(seed).encode(),
        stream.encode(),
        str(explicit or 0).encode(),
    )
