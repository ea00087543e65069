"""The server's progress after every complete round, written atomically, so a restarted server resumes there.

After each round the ServerApp writes, in the run folder's ``progress/``: the server's state (``round-<k>.pt``, the
algorithm's own checkpoint: model and knowledge cache for FedGEMS) and then ``progress.json`` (the round, the
metrics of every round so far, the global RNG states, the name of that checkpoint). Each file is written beside its
final name and renamed over it (``os.replace``), and ``progress.json`` goes last: it is the commit. A crash at any
moment leaves either the previous complete round or this one, never a mix. Every stochastic step of the algorithms
is seeded by ``(seed, client, round, phase)`` (:mod:`fl_kd.kd.seeding`), so the RNG states are kept for what
draws from the global generators outside those steps.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_kd.kd.roles import ServerRole

PROGRESS_DIR = "progress"
PROGRESS_FILE = "progress.json"
_FORMAT = 1


class ProgressError(ValueError):
    """Saved progress that cannot be resumed; the message names the file and the reason."""


@dataclass(frozen=True)
class Progress:
    """The last complete round of a run: ``round``, the metric rows of rounds ``1..round``, the server checkpoint."""

    round: int
    history: list[dict[str, Any]]
    server_checkpoint: Path
    experiment_json: str


def save_progress(
    out_dir: Path, server_round: int, server: ServerRole, history: list[dict[str, Any]], experiment_json: str
) -> Path:
    """Write round ``server_round``'s state atomically (see the module docstring); return ``progress.json``."""
    folder = Path(out_dir) / PROGRESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"round-{server_round}.pt"
    temporary = folder / f".{checkpoint.name}.tmp"
    server.save(temporary)
    saved = temporary.exists()  # an algorithm without server state (ServerRole.save) writes nothing
    if saved:
        _fsync(temporary)
        os.replace(temporary, checkpoint)
    state = {
        "format": _FORMAT,
        "round": server_round,
        "history": history,
        "server_checkpoint": checkpoint.name if saved else None,
        "experiment": experiment_json,
        "rng": _rng_states(),
    }
    path = folder / PROGRESS_FILE
    temporary = folder / f".{PROGRESS_FILE}.tmp"
    temporary.write_text(json.dumps(state, sort_keys=True) + "\n")
    _fsync(temporary)
    os.replace(temporary, path)
    for old in folder.glob("round-*.pt"):  # earlier rounds are superseded once the commit is on disk
        if old != checkpoint or not saved:
            old.unlink(missing_ok=True)
    return path


def load_progress(out_dir: Path, experiment_json: str) -> Progress | None:
    """The saved progress of the run in ``out_dir`` (``None`` if there is none); restores the global RNG states.

    Raises
    ------
    ProgressError
        The progress file is unreadable, of another format, or of another experiment, or its checkpoint is gone.
    """
    path = Path(out_dir) / PROGRESS_DIR / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        if state.get("format") != _FORMAT:
            raise ProgressError(f"{path}: format {state.get('format')!r}, expected {_FORMAT}")
        if state["server_checkpoint"] is None:
            raise ProgressError(f"{path}: the algorithm saved no server state (ServerRole.save), so it cannot resume")
        progress = Progress(
            int(state["round"]), list(state["history"]), path.parent / str(state["server_checkpoint"]),
            str(state["experiment"]),
        )  # fmt: skip
        torch_state, numpy_state = _decode_rng(state["rng"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, ProgressError):
            raise
        raise ProgressError(f"{path}: unreadable progress ({type(err).__name__}: {err})") from None
    if progress.experiment_json != experiment_json:
        raise ProgressError(f"{path}: saved by another experiment config; resume only the same experiment")
    if not progress.server_checkpoint.is_file():
        raise ProgressError(f"{path}: its server checkpoint {progress.server_checkpoint.name} is missing")
    if len(progress.history) != progress.round:
        raise ProgressError(f"{path}: {len(progress.history)} metric rows for round {progress.round}")
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    return progress


def _rng_states() -> dict[str, Any]:
    """The global torch and NumPy RNG states as JSON (bytes in base64; no pickle in a file a server reads back)."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "numpy": [str(name), base64.b64encode(np.asarray(keys, np.uint32).tobytes()).decode("ascii"),
                  int(position), int(has_gauss), float(cached)],
    }  # fmt: skip


def _decode_rng(state: dict[str, Any]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    torch_state = torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8)
    name, keys, position, has_gauss, cached = state["numpy"]
    numpy_keys = np.frombuffer(base64.b64decode(keys), dtype=np.uint32).copy()
    return torch_state, (str(name), numpy_keys, int(position), int(has_gauss), float(cached))


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
