"""Secrets: numbers that key a party's random draws and follow from something only that party holds.

Every party receives the whole run config, seeds included, so a draw that must stay hidden from the others (a
defence's noise, which transfer samples are canaries) cannot follow from the config alone. It follows from a secret:
a digest of data the drawing party alone holds, or of a key it is given, which the others would need exactly to
recompute it. Being a digest, it keeps a run deterministic: same config, seed and key, same numbers.

The FedGEMS server holds no such data: the transfer set, its labelled part and its held-out slice come from a public
dataset that every node derives with the run's seed. So its draws are keyed by ``FL_KD_SERVER_KEY``
(:func:`server_key`), set where the ServerApp runs and never in the run config.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from torch import Tensor

#: Bits of a secret: small enough for ``torch.Generator.manual_seed`` and NumPy's uint64 key arithmetic.
SECRET_BITS = 62


SERVER_KEY_ENV = "FL_KD_SERVER_KEY"
"""The environment variable holding the server's key: any string, set on the ServerApp's machine only."""


def server_key(purpose: bytes) -> int | None:
    """The server's secret for ``purpose`` (a digest of ``FL_KD_SERVER_KEY``), or None when the key is not set."""
    value = os.environ.get(SERVER_KEY_ENV, "")
    return secret_of(b"fl-kd server key", purpose, value.encode()) if value else None


def secret_of(*parts: bytes) -> int:
    """A ``SECRET_BITS``-bit number from ``parts`` (SHA-256; each part length-prefixed so no two lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return int.from_bytes(digest.digest()[:8], "little") >> (64 - SECRET_BITS)


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's dtype, shape and values as bytes, for :func:`secret_of`."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return f"{array.dtype.str}{array.shape}".encode() + array.tobytes()


def secret_words(secret: int) -> tuple[int, int]:
    """``secret`` as two 32-bit words, the coordinates :func:`fl_kd.kd.seeding.derive_seed` keeps whole."""
    return secret & 0xFFFFFFFF, (secret >> 32) & 0xFFFFFFFF
