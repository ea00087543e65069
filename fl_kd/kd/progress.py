"""The progress of a run after every complete round, written atomically, so a restarted run resumes there.

**Server.** After each round the ServerApp writes, in the run folder's ``progress/``: the whole state of the
server half (``round-<k>.pt``: :func:`fl_kd.checkpoint.object_state` of the algorithm's server role, so every
algorithm resumes the same way, whatever its models and caches) and then ``progress.json`` (the round, the metrics
of every round so far, the global RNG states, the name and SHA-256 of that checkpoint, and per client the last
round whose train message it answered). Each file is written beside its final name and renamed over it
(``os.replace``), and ``progress.json`` goes last: it is the commit. A crash at any moment leaves either the
previous complete round or this one, never a mix. Every stochastic step of the algorithms is seeded by
``(seed, client, round, phase)`` (:mod:`fl_kd.kd.seeding`), so the RNG states are kept for what draws from the
global generators outside those steps.

**Clients.** A resumed run is a new Flower run, whose ClientApps start with an empty ``context.state``. So each
client also writes its state (:meth:`fl_kd.kd.roles.ClientRole.state_dict`) node-locally after every message that
changed it, as ``<folder>/<run key>/client-<id>/round-<k>.pt`` (:func:`save_client_state`), keeping its two newest
rounds. The server tells every client which round's state it must hold; a client whose ``context.state`` is empty
loads exactly that round's file, and refuses any other (:func:`load_client_state`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl_kd.checkpoint import CheckpointError, content_digest, object_state, read_checkpoint, restore_object_state
from fl_kd.config import ConfigError
from fl_kd.kd.roles import ServerRole

PROGRESS_DIR = "progress"
PROGRESS_FILE = "progress.json"
_FORMAT = 3

#: Run config key: the folder under which every client keeps its state (on its own node); see :func:`state_root`.
CLIENT_STATE_DIR_KEY = "client-state-dir"
#: Default name of that folder, in the node's data folder or else in the run folder.
CLIENT_STATE_DIR = "client-state"
#: Rounds of saved state each client keeps: the newest, and the one before (the server may have saved only that).
CLIENT_ROUNDS_KEPT = 2
#: The file in the run folder that keeps the run's id (:func:`folder_run_id`).
RUN_ID_FILE = "run-id"


class ProgressError(ValueError):
    """Saved progress that cannot be resumed; the message names the file and the reason."""


class ClientStateError(ValueError):
    """A client's saved state that must not be used (missing, of another round, run or client, or corrupted)."""


@dataclass(frozen=True)
class Progress:
    """The last complete round of a run: ``round``, the metric rows of rounds ``1..round``, the server checkpoint,
    and per client id the last round whose train message it answered (the round of the state it must hold)."""

    round: int
    history: list[dict[str, Any]]
    server_checkpoint: Path
    experiment_json: str
    client_rounds: dict[int, int] = field(default_factory=dict)
    rng: tuple[torch.Tensor, tuple[Any, ...]] | None = None

    def restore_rng(self) -> None:
        """Set the global torch and NumPy RNGs to their states after the saved round (once the server is built:
        building it may draw from them)."""
        if self.rng is not None:
            torch.set_rng_state(self.rng[0])
            np.random.set_state(self.rng[1])


def save_progress(
    out_dir: Path,
    server_round: int,
    server: ServerRole,
    history: list[dict[str, Any]],
    experiment_json: str,
    baseline: Mapping[str, str] | None = None,
    client_rounds: Mapping[int, int] | None = None,
) -> Path:
    """Write round ``server_round``'s state atomically (see the module docstring); return ``progress.json``.

    ``baseline`` (:func:`fl_kd.checkpoint.state_digests` of the freshly built server) keeps unchanged data out of
    the checkpoint. A server whose state cannot be written is recorded as such, with the reason, so the run goes on
    and only a resume is refused.
    """
    folder = Path(out_dir) / PROGRESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"round-{server_round}.pt"
    temporary = folder / f".{checkpoint.name}.tmp"
    unresumable = None
    try:
        torch.save(object_state(server, baseline), temporary)
    except CheckpointError as err:
        unresumable = f"the server's state cannot be saved: {err}"
    saved = unresumable is None
    if saved:
        _fsync(temporary)
        os.replace(temporary, checkpoint)
    state = {
        "format": _FORMAT,
        "round": server_round,
        "history": history,
        "server_checkpoint": checkpoint.name if saved else None,
        "server_checkpoint_sha256": _file_digest(checkpoint) if saved else None,
        "unresumable": unresumable,
        "client_rounds": {str(cid): int(r) for cid, r in sorted((client_rounds or {}).items())},
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
    """The saved progress of the run in ``out_dir`` (``None`` if there is none).

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
        if not isinstance(state, dict):
            raise ProgressError(f"not a progress record (a JSON object), got {type(state).__name__}")
        if state.get("format") != _FORMAT:
            raise ProgressError(f"format {state.get('format')!r}, expected {_FORMAT}")
        if state["server_checkpoint"] is None:
            raise ProgressError(f"this run cannot resume: {state.get('unresumable')}")
        progress = Progress(
            _saved_round(state), _saved_history(state), path.parent / _saved_checkpoint_name(state),
            str(state["experiment"]), _saved_client_rounds(state), _decode_rng(state["rng"]),
        )  # fmt: skip
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        if isinstance(err, ProgressError):  # raised above without the file's name
            raise ProgressError(f"{path}: {err}") from None
        raise ProgressError(f"{path}: unreadable progress ({type(err).__name__}: {err})") from None
    if progress.experiment_json != experiment_json:
        raise ProgressError(f"{path}: saved by another experiment config; resume only the same experiment")
    if not progress.server_checkpoint.is_file():
        raise ProgressError(f"{path}: its server checkpoint {progress.server_checkpoint.name} is missing")
    if _file_digest(progress.server_checkpoint) != state.get("server_checkpoint_sha256"):
        # torch.load reads changed bytes without a word: a flipped bit in a weight resumed as another run
        raise ProgressError(
            f"{path}: its server checkpoint {progress.server_checkpoint.name} is not the file it saved (damaged or "
            "replaced)"
        )
    if len(progress.history) != progress.round:
        raise ProgressError(f"{path}: {len(progress.history)} metric rows for round {progress.round}")
    return progress


def _saved_round(state: dict[str, Any]) -> int:
    """The last saved round: a whole number >= 1 (``save_progress`` writes one after every round)."""
    value = state["round"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProgressError(f"round must be a whole number >= 1, got {value!r}")
    return value


def _saved_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One metric row per round, in order (rows that are no rows, or of other rounds, are refused)."""
    rows = state["history"]
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ProgressError("history must be a list of metric rows")
    if [row.get("round") for row in rows] != list(range(1, len(rows) + 1)):
        raise ProgressError("history rows must be those of rounds 1, 2, ... in order")
    return rows


def _saved_checkpoint_name(state: dict[str, Any]) -> str:
    """The saved round's checkpoint, in the progress folder: no other name or path is read."""
    name = state["server_checkpoint"]
    if name != f"round-{state['round']}.pt":
        raise ProgressError(f"server_checkpoint must be round-{state['round']}.pt, got {name!r}")
    return str(name)


def _saved_client_rounds(state: dict[str, Any]) -> dict[int, int]:
    """Client id -> the round of its state: ids >= 0, rounds in 1..the saved round."""
    saved, last = state["client_rounds"], state["round"]
    if not isinstance(saved, dict):
        raise ProgressError("client_rounds must be a mapping of client id to round")
    out = {}
    for key, value in saved.items():
        if not (isinstance(key, str) and key.isascii() and key.isdecimal()):
            raise ProgressError(f"client_rounds: client id {key!r} is no whole number >= 0")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= last:
            raise ProgressError(f"client_rounds: client {key}'s round {value!r} is not in 1..{last}")
        out[int(key)] = value
    return out


def restore_server(server: ServerRole, progress: Progress) -> None:
    """Load the saved round's server state into ``server``, freshly built from the same experiment.

    Raises
    ------
    ProgressError
        The checkpoint is unreadable or does not fit ``server`` (the message says where and why).
    """
    try:
        restore_object_state(server, read_checkpoint(progress.server_checkpoint), progress.server_checkpoint)
    except CheckpointError as err:
        raise ProgressError(str(err)) from None


# -- client state ---------------------------------------------------------------------------------------------------


def run_key(experiment_json: str, run_id: str) -> str:
    """The name of one federation's client states: the same for a run and its resumption, which share the
    experiment and the run's id (:func:`folder_run_id`); another experiment or run gets other files."""
    return "run-" + hashlib.sha256(f"{run_id}\n{experiment_json}".encode()).hexdigest()[:16]


def folder_run_id(out_dir: Path) -> str:
    """The id of the run in ``out_dir``, read from its :data:`RUN_ID_FILE`, written there by the run's first start.

    The id is the folder's absolute path at that first start, which is what named the clients' states before the id
    was kept: a folder that has since moved (copied to another disk, resumed under another path) keeps its id, so its
    clients find their states, and a folder of an older run, which has no file, gets its path as before.
    """
    path = out_dir / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if not run_id:
            raise ConfigError(
                f"{path} is empty: it names the clients' saved states of this run; write the run's id back"
            )
        return run_id
    run_id = str(out_dir.resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{RUN_ID_FILE}.{os.getpid()}.tmp")
    temporary.write_text(run_id + "\n")
    os.replace(temporary, path)
    return run_id


def state_root(
    run_config_dir: str | None, node_state_dir: Path | None, data_dir: Path | None, output_dir: str | None
) -> Path | None:
    """Where a client keeps its state, first of: the node's own ``state-dir``, the run config's
    ``client-state-dir``, ``client-state/`` in the node's data folder, ``client-state/`` in the run folder (the
    simulation's and a one-machine deployment's). ``None`` when none is known (the client then keeps no file)."""
    if node_state_dir is not None:
        return node_state_dir
    if run_config_dir:
        return Path(run_config_dir).expanduser()
    if data_dir is not None:
        return data_dir / CLIENT_STATE_DIR
    return Path(output_dir) / CLIENT_STATE_DIR if output_dir else None


def client_state_folder(root: Path, run: str, client_id: int) -> Path:
    """The folder of client ``client_id``'s saved states in run ``run`` (see :func:`run_key`)."""
    return Path(root) / run / f"client-{client_id}"


def save_client_state(
    folder: Path, server_round: int, client_id: int, run: str, state: Mapping[str, Tensor], keep: int | None = None
) -> Path:
    """Write the client's state after a message of ``server_round`` atomically; keep :data:`CLIENT_ROUNDS_KEPT` rounds,
    and round ``keep`` (the one the server last named as this client's) whatever its age.

    Files of later rounds are dropped: they belong to a run that died before its server saved them, and are redone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in state.items()}
    payload = {
        "format": 1, "run": run, "client": client_id, "round": server_round,
        "digest": content_digest(tensors), "state": tensors,
    }  # fmt: skip
    path = folder / f"round-{server_round}.pt"
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"  # a dying run's ClientApp may still be writing
    torch.save(payload, temporary)
    _fsync(temporary)
    os.replace(temporary, path)
    rounds = _saved_rounds(folder)
    kept = {server_round, *[r for r in rounds if r < server_round][-(CLIENT_ROUNDS_KEPT - 1) :]}
    if keep is not None and keep < server_round:
        kept.add(keep)
    for old in rounds:
        if old not in kept:
            (folder / f"round-{old}.pt").unlink(missing_ok=True)
    return path


def load_client_state(folder: Path, server_round: int, client_id: int, run: str) -> dict[str, Tensor]:
    """The state client ``client_id`` saved for exactly ``server_round`` of run ``run``.

    Raises
    ------
    ClientStateError
        No file for that round, or one that is unreadable, of another format, run, client or round, or whose
        tensors do not match the digest written with them (corrupted).
    """
    path = folder / f"round-{server_round}.pt"
    if not path.is_file():
        saved = _saved_rounds(folder)
        raise ClientStateError(
            f"{path}: no state saved for round {server_round} (saved rounds here: {saved if saved else 'none'})"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises EOFError, UnpicklingError, RuntimeError...
        raise ClientStateError(f"{path}: unreadable ({type(err).__name__}), truncated or corrupted") from None
    if not isinstance(payload, Mapping) or payload.get("format") != 1 or not isinstance(payload.get("state"), Mapping):
        raise ClientStateError(f"{path}: not a client state file")
    for key, expected in (("run", run), ("client", client_id), ("round", server_round)):
        if payload.get(key) != expected:
            raise ClientStateError(f"{path}: saved for {key} {payload.get(key)!r}, expected {expected!r}")
    state = dict(payload["state"])
    if not all(isinstance(value, Tensor) for value in state.values()) or content_digest(state) != payload.get("digest"):
        raise ClientStateError(f"{path}: its tensors do not match the digest saved with them (corrupted)")
    return state


def _saved_rounds(folder: Path) -> list[int]:
    rounds = []
    for path in folder.glob("round-*.pt"):
        number = path.stem.removeprefix("round-")
        if number.isdigit():
            rounds.append(int(number))
    return sorted(rounds)


def _rng_states() -> dict[str, Any]:
    """The global torch and NumPy RNG states as JSON (bytes in base64; no pickle in a file a server reads back)."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "numpy": [str(name), base64.b64encode(np.asarray(keys, np.uint32).tobytes()).decode("ascii"),
                  int(position), int(has_gauss), float(cached)],
    }  # fmt: skip


def _decode_rng(state: dict[str, Any]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """The global RNG states as saved, checked here so that a damaged one fails the load, not the restore."""
    torch_state = torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8)
    if torch_state.numel() != torch.get_rng_state().numel():
        raise ProgressError(f"rng: a torch generator state of {torch_state.numel()} bytes, not torch's")
    try:  # on a scratch generator: a state of the right size can still be no state torch takes
        torch.Generator().set_state(torch_state)
    except RuntimeError as err:
        raise ProgressError(f"rng: not a torch generator state ({err})") from None
    name, keys, position, has_gauss, cached = state["numpy"]
    numpy_keys = np.frombuffer(base64.b64decode(keys), dtype=np.uint32).copy()
    if name != "MT19937" or numpy_keys.size != 624 or not 0 <= int(position) <= 624:
        raise ProgressError("rng: not a NumPy MT19937 state")
    numpy_state = (str(name), numpy_keys, int(position), int(has_gauss), float(cached))
    np.random.RandomState().set_state(numpy_state)  # the same check for NumPy's; it raises ValueError
    return torch_state, numpy_state


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, which ``progress.json`` keeps for the checkpoint it commits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
