"""Seeds derived from explicit coordinates, so a Flower run and the in-process runner draw the same numbers.

Every stochastic step of selective distillation (client sampling, shuffling, dropout) is keyed by
``(seed, client_id, round, phase)``. Deriving the stream from those values, rather than from the order in
which processes happen to consume a global generator, is what makes the two runtimes agree bit for bit.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

SERVER_ID = -1
"""Client-id slot used for streams that belong to the server."""


def _as_word(part: int | str) -> int:
    # SeedSequence wants non-negative ints; strings (phase names) hash stably across processes, unlike hash().
    if isinstance(part, str):
        return zlib.crc32(part.encode("utf-8"))
    return int(part) % (2**32)


def derive_seed(seed: int, *parts: int | str) -> int:
    """Derive a 63-bit seed from a base seed and coordinates such as client id, round and phase.

    Parameters
    ----------
    seed : int
        Base seed of the run.
    *parts : int | str
        Coordinates that name the stream, e.g. ``(client_id, round, "local")``. Negative ids are allowed.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``; distinct coordinates give independent streams.
    """
    sequence = np.random.SeedSequence(entropy=_as_word(seed), spawn_key=tuple(_as_word(p) for p in parts))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for shuffling, kept apart from the global stream)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextmanager
def seeded_torch(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with torch's global RNG seeded to ``seed`` and restore the caller's state afterwards.

    Layers such as dropout draw from the global generator and offer no ``generator=`` argument, so the only
    way to make them reproducible per phase is to fork the global state for the duration of the phase.
    """
    device = torch.device(device)
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def use_deterministic_algorithms() -> None:
    """Make CUDA training bit-reproducible for the whole process (cuDNN, cuBLAS and atomic-add kernels).

    Seeding alone is not enough on a GPU: several backward kernels accumulate with atomics in whatever order
    threads finish, so two runs of the same seed drift apart after the first step. This switch is process-wide
    (torch offers no scoped form) and costs some speed; call it once, before the first CUDA operation.
    """
    # cuBLAS needs a fixed workspace to pick reproducible reductions; it reads the variable at initialisation.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: torch flags every adaptive_avg_pool2d backward as non-deterministic, yet where our models pool
    # with disjoint windows (global pooling, the clients' 2x2 grids on even maps) each input gradient is written
    # once, and where windows overlap (cnn_server's 3x3 grid on a 7x7 map) GridAvgPool uses matrix products on CUDA.
    torch.use_deterministic_algorithms(True, warn_only=True)
