"""What a VFL node holds and how its party survives between messages.

A ClientApp does not persist, so each message's handler finds its party in what the last one saved: its models,
optimiser, step counter and defence state (random generators, CoAE's autoencoder, ...), packed as one buffer of tensor
bytes beside a small ``torch.save`` blob, so a party rebuilt from it continues exactly where it stopped. By default
(``training.party_state=node``) the save and the node's aligned positions are files on the node
(:func:`node_state_folder`) and ``context.state`` holds only their tokens: Flower's simulation carries
``context.state`` to the ClientApp and back with every message, which for a Fashion-MNIST party's models and Adam
state was most of an exchange's time. With ``training.party_state=context`` everything is in ``context.state``, the
models as ``ArrayRecord``\\ s.
Rebuilding costs more than most protocol steps (building the models, decoding the state, cutting the node's rows), so
the process that saved a party also keeps the live object (:func:`take_party`), marked with the save's token: the next
message reuses it only when its ``context.state`` carries that very token, i.e. names exactly what the live party
saved. A simulation hands a node's messages to whichever worker process is free, a failed handler leaves an older
state behind, a restarted node has none: each of these shows a different token and the party is rebuilt from the save
the token names.
The attacking feature party also keeps its :class:`~fl_kd.vfl.attacks.ObservationLog` in ``context.state``, and the
label party its secret (:mod:`fl_kd.vfl.secret`), read once at setup. Neither ``context.state`` nor the node's files
leave the node.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.protocol import decode_array, record
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.attacks import ObservationLog
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.experiment import VFLData, build_feature_party, build_label_party, prepare_data
from fl_kd.vfl.parties import FeatureParty, LabelParty
from fl_kd.vfl.secret import label_party_secret

# Records of context.state, all prefixed "vfl-" so that a new run on the node can clear them.
ALIGNMENT = "vfl-alignment"
PARTY_STATE = "vfl-party"
MODEL_PREFIX = "vfl-model-"
OBSERVATIONS = "vfl-observations"
LABEL_SECRET = "vfl-label-secret"
_MODELS = ("model", "top", "bottom")
_TOKEN = "token"
_ON_NODE = "on-node"
#: Where parties kept on the node (``training.party_state=node``) write their state: one folder per run and node.
NODE_STATE_ROOT = Path(tempfile.gettempdir()) / f"fl-kd-vfl-state-{os.getuid() if hasattr(os, 'getuid') else 0}"
#: A node's state folder is its user's alone: the label party's models and defence state sit in a shared ``/tmp``.
PRIVATE = 0o700

#: Parties this process saved last, by (run id, node id): the token of that save and the live party.
_LIVE: dict[tuple[int, int], tuple[str, FeatureParty | LabelParty]] = {}


@functools.lru_cache(maxsize=4)
def _run(config_json: str) -> tuple[VFLRunConfig, VFLData]:
    # Simulation actors are reused across nodes and messages: load and cut the data once per process. Each node
    # keeps only its own columns below; a deployment would load just those.
    cfg = vp.decode_config(config_json)
    return cfg, prepare_data(cfg)


@dataclass
class Node:
    """This node in the run: the config, its role and what it holds (its sample ids and, before alignment, rows)."""

    cfg: VFLRunConfig
    num_classes: int
    role: vp.PartyRole
    train_ids: NDArray[np.int64]
    test_ids: NDArray[np.int64]
    train_features: Tensor | None
    test_features: Tensor | None
    train_labels: Tensor | None
    test_labels: Tensor | None

    @property
    def is_attacker(self) -> bool:
        """Whether this node is the feature party that runs the attacks."""
        return bool(self.cfg.attack) and not self.role.is_label and self.role.party_id == self.cfg.attacker_party


def node_of(context: Context) -> Node:
    """This node's config, role and holdings, from the run config and the node config."""
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, data = _run(str(context.run_config[vp.CONFIG_KEY]))
    role = vp.party_role(context.node_config, cfg.num_feature_parties)
    node = Node(cfg, data.num_classes, role, data.train_ids, data.test_ids, None, None, None, None)
    if not role.is_label:
        node.train_features, node.test_features = data.train_columns[role.party_id], data.test_columns[role.party_id]
        return node
    if cfg.vfl_split.label_party_features:
        node.train_features, node.test_features = data.train_columns[-1], data.test_columns[-1]
    node.train_labels, node.test_labels = data.train_labels, data.test_labels
    return node


# -- alignment --------------------------------------------------------------------------------------------------------
def save_alignment(context: Context, positions: Mapping[str, NDArray[np.int64]], on_node: bool = False) -> None:
    """Start this node's run afresh on the aligned rows ``{"train": positions, "test": positions}``.

    With ``on_node`` (``training.party_state=node``) they go to a file in :func:`node_state_folder`, which is emptied
    first, and ``context.state`` holds only a token naming them, so Flower does not carry them with every message.
    """
    for key in [key for key in context.state if key.startswith("vfl-")]:
        del context.state[key]
    if not on_node:
        context.state[ALIGNMENT] = ArrayRecord({split: Array(p) for split, p in positions.items()})
        return
    folder = node_state_folder(context)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=PRIVATE)
    _remove_stale_runs(folder.parent.parent)
    token = uuid.uuid4().hex
    arrays = {split: np.asarray(p, np.int64) for split, p in positions.items()}
    np.savez(folder / f"alignment-{token}.npz", **arrays)  # type: ignore[arg-type]
    context.state[ALIGNMENT] = ConfigRecord({_TOKEN: token, _ON_NODE: True})


STALE_SECONDS = 24 * 3600.0
"""A run folder of :data:`NODE_STATE_ROOT` untouched this long belongs to a run that ended: a setup removes it."""


def _remove_stale_runs(root: Path) -> None:
    """Remove the run folders under ``root`` whose newest file is older than :data:`STALE_SECONDS`."""
    now = time.time()
    for run in root.glob("run-*"):
        try:
            newest = max((p.stat().st_mtime for p in run.rglob("*") if p.is_file()), default=run.stat().st_mtime)
        except OSError:
            continue  # another process is removing it
        if now - newest > STALE_SECONDS:
            shutil.rmtree(run, ignore_errors=True)


#: Alignments kept on the node, read once per process: by (run id, node id, token).
_ALIGNMENTS: dict[tuple[int, int, str], dict[str, NDArray[np.int64]]] = {}


def positions(context: Context, split: str) -> NDArray[np.int64]:
    """Positions in this node's own rows of the aligned ``split`` samples (``"train"`` or ``"test"``)."""
    if ALIGNMENT not in context.state:
        raise RuntimeError("this party has not been set up: train.setup must come first")
    if ALIGNMENT in context.state.array_records:
        return decode_array(context.state.array_records[ALIGNMENT][split]).astype(np.int64)
    token = str(record(context.state, ALIGNMENT).get(_TOKEN))
    key = (context.run_id, context.node_id, token)
    if key not in _ALIGNMENTS:
        path = node_state_folder(context) / f"alignment-{token}.npz"
        try:
            with np.load(path) as saved:
                _ALIGNMENTS[key] = {name: saved[name].astype(np.int64) for name in saved.files}
        except OSError as err:
            raise RuntimeError(f"this party's alignment is gone from the node ({path}): {err}") from None
        for other in [other for other in _ALIGNMENTS if other[0] != context.run_id]:
            del _ALIGNMENTS[other]  # alignments of an earlier run on this process
    return _ALIGNMENTS[key][split]


def rows(tensor: Tensor | None, at: NDArray[np.int64]) -> Tensor | None:
    """Rows ``at`` of ``tensor`` (``None`` stays ``None``)."""
    return None if tensor is None else tensor[torch.from_numpy(at)]


# -- the label party's secret ------------------------------------------------------------------------------------------
def save_label_secret(context: Context, node: Node) -> None:
    """Read the label party's secret from its node config, or derive it from its aligned rows, and keep it here.

    Once per run, at setup (after :func:`save_alignment`): a key file is read once, and the digest of the label
    party's data (:func:`fl_kd.vfl.secret.data_secret`) is not recomputed for every message.
    """
    at = positions(context, "train")
    labels = rows(node.train_labels, at)
    assert labels is not None
    secret = label_party_secret(context.node_config, labels, rows(node.train_features, at))
    context.state[LABEL_SECRET] = ConfigRecord({"secret": secret})


def label_secret(context: Context) -> int:
    """The label party's secret kept by :func:`save_label_secret`."""
    secret = record(context.state, LABEL_SECRET).get("secret")
    if not isinstance(secret, int) or isinstance(secret, bool):
        raise RuntimeError("the label party has no secret: train.setup must come first")
    return secret


# -- the party --------------------------------------------------------------------------------------------------------
_TENSOR = "fl-kd-tensor"
"""Marks a tensor's place in a packed state: ``(_TENSOR, dtype name, shape)``."""


def _pack(state: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """``state`` as a ``torch.save`` blob of all but its tensors, and the tensors' bytes one after another.

    ``torch.save`` writes a record per tensor, which for an optimiser's state (three tensors per parameter) cost more
    than the protocol step itself; here each tensor leaves its dtype and shape in its place and its bytes, exact, in
    one buffer. :func:`_unpack` reverses it.
    """
    chunks: list[bytes] = []

    def strip(value: Any) -> Any:
        if isinstance(value, Tensor):
            chunks.append(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            return (_TENSOR, str(value.dtype).removeprefix("torch."), tuple(value.shape))
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(strip(item) for item in value)
        return value

    skeleton = strip(dict(state))
    buffer = io.BytesIO()
    torch.save(skeleton, buffer)
    return buffer.getvalue(), b"".join(chunks)


def _unpack(skeleton_blob: bytes, tensor_bytes: bytes) -> dict[str, Any]:
    """The state :func:`_pack` packed, its tensors bit for bit."""
    skeleton = torch.load(io.BytesIO(skeleton_blob), weights_only=True)
    data = memoryview(tensor_bytes)
    start = 0

    def fill(value: Any) -> Any:
        nonlocal start
        if isinstance(value, tuple) and len(value) == 3 and value[0] == _TENSOR:
            dtype, shape = getattr(torch, value[1]), tuple(value[2])
            size = torch.empty((), dtype=dtype).element_size() * int(torch.Size(shape).numel())
            chunk, start = bytearray(data[start : start + size]), start + size
            if size == 0:
                return torch.empty(shape, dtype=dtype)
            return torch.frombuffer(chunk, dtype=torch.uint8).view(dtype).reshape(shape)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(fill(item) for item in value)
        return value

    state = fill(skeleton)
    if start != len(data):
        raise RuntimeError(f"the saved party state has {len(data) - start} bytes of tensors too many")
    return dict(state)


def take_party(context: Context, node: Node) -> FeatureParty | LabelParty:
    """This node's party for one message: the live one this process saved, if ``context.state`` holds its save.

    Otherwise :func:`load_party`. The party is taken out of this process's keeping until :func:`save_party`, so
    a handler that fails half-way never leaves a half-updated party to the next message.
    """
    live = _LIVE.pop((context.run_id, context.node_id), None)
    if live is not None and PARTY_STATE in context.state and record(context.state, PARTY_STATE).get(_TOKEN) == live[0]:
        return live[1]
    return load_party(context, node)


def node_state_folder(context: Context) -> Path:
    """The folder on this node that holds its party's saves when ``training.party_state=node``."""
    return NODE_STATE_ROOT / f"run-{context.run_id}" / f"node-{context.node_id}"


def _saved_state(context: Context) -> dict[str, Any] | None:
    """The party's last save, from ``context.state`` or from the node file its token names (None: never saved)."""
    if PARTY_STATE not in context.state:
        return None
    entries = record(context.state, PARTY_STATE)
    if entries.get(_ON_NODE):
        path = node_state_folder(context) / f"{entries.get(_TOKEN)}.state"
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise RuntimeError(f"this party's saved state is gone from the node ({path}): {err}") from None
        size = int.from_bytes(blob[:8], "little")
        return _unpack(blob[8 : 8 + size], blob[8 + size :])
    saved = _unpack(bytes(entries["state"]), bytes(entries["tensors"]))
    for name in _MODELS:
        if MODEL_PREFIX + name in context.state:
            saved[name] = context.state.array_records[MODEL_PREFIX + name].to_torch_state_dict()
    return saved


def load_party(context: Context, node: Node | None = None) -> FeatureParty | LabelParty:
    """This node's party on its aligned training rows, restored from its last save when there is one."""
    node = node_of(context) if node is None else node
    at = positions(context, "train")
    saved = _saved_state(context)
    party: FeatureParty | LabelParty
    if node.role.is_label:
        labels = rows(node.train_labels, at)
        assert labels is not None
        defence_state = None if saved is None else saved["defence_state"]
        features = rows(node.train_features, at)
        party = build_label_party(
            node.cfg, features, labels, node.num_classes, defence_state=defence_state, secret=label_secret(context)
        )
    else:
        features = rows(node.train_features, at)
        assert features is not None
        party = build_feature_party(node.cfg, node.role.party_id, features, node.num_classes)
    if saved is not None:
        party.load_state_dict(saved)
    return party


def save_party(context: Context, party: FeatureParty | LabelParty, on_node: bool = False) -> None:
    """Save the party, and keep the live party in this process; a fresh token tells whether they are the same save.

    Either serves the next message (:func:`take_party`). By default the save is ``context.state`` (its models as
    ``ArrayRecord``\\ s, the rest packed), which Flower's simulation carries to the ClientApp and back with every
    message: for a Fashion-MNIST bottom model and its Adam state, most of an exchange's time. With ``on_node``
    (``training.party_state=node``) the save is a file in :func:`node_state_folder` and ``context.state`` holds only
    its token; the save before it is kept too, for a message whose handler failed after writing.
    """
    state = party.state_dict()
    token = uuid.uuid4().hex  # from the OS, not from torch's or NumPy's generators, which training draws from
    if on_node:
        previous = record(context.state, PARTY_STATE).get(_TOKEN) if PARTY_STATE in context.state else None
        _write_node_state(context, token, str(previous) if previous else None, state)
        for name in _MODELS:
            context.state.pop(MODEL_PREFIX + name, None)
        context.state[PARTY_STATE] = ConfigRecord({_TOKEN: token, _ON_NODE: True})
    else:
        for name in _MODELS:
            weights = state.pop(name, None)
            if weights is not None:
                context.state[MODEL_PREFIX + name] = ArrayRecord(weights)
        skeleton, tensors = _pack(state)
        context.state[PARTY_STATE] = ConfigRecord({"state": skeleton, "tensors": tensors, _TOKEN: token})
    for key in [key for key in _LIVE if key[0] != context.run_id]:
        del _LIVE[key]  # parties of an earlier run on this process
    _LIVE[(context.run_id, context.node_id)] = (token, party)


def _write_node_state(context: Context, token: str, previous: str | None, state: Mapping[str, Any]) -> None:
    """Write ``state`` as ``<token>.state`` (atomically) and remove every other save but ``previous``."""
    folder = node_state_folder(context)
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE)
    skeleton, tensors = _pack(state)
    temporary = folder / f"{token}.tmp"
    temporary.write_bytes(len(skeleton).to_bytes(8, "little") + skeleton + tensors)
    os.replace(temporary, folder / f"{token}.state")
    keep = {f"{token}.state", f"{previous}.state"}
    for path in folder.glob("*.state"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


# -- the attacker's observations --------------------------------------------------------------------------------------
def observation_log(context: Context) -> ObservationLog:
    """The attacking party's log as kept in ``context.state`` (entries are decoded only when read)."""
    entries = context.state.array_records[OBSERVATIONS] if OBSERVATIONS in context.state else {}
    return ObservationLog(dict(entries), decode=decode_array)


def save_observation_log(context: Context, log: ObservationLog) -> None:
    """Keep the log in ``context.state``; entries already stored are not encoded again."""
    entries = {key: entry if isinstance(entry, Array) else Array(entry) for key, entry in log.entries().items()}
    context.state[OBSERVATIONS] = ArrayRecord(entries)
