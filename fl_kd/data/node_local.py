"""What one deployed client node holds: its identity, device tier and private data, named by its node config.

In a real deployment each SuperNode runs on its owner's machine and must load *its own* data only, never the
whole federation. The node's Flower ``--node-config`` (a flat mapping of scalars) says what that is:

``partition-id`` (int, required)
    The client id, ``0 .. num_clients-1``: it seeds the client's model and picks its tier by default.
``num-partitions`` (int, optional)
    Size of the federation; when given it must equal the experiment's ``num_clients``.
``data-dir`` (str)
    A folder in the layout of :data:`NODE_DATA_FILES` (``x_train.npy``, ``y_train.npy``, optionally ``x_test.npy``
    and ``y_test.npy``): the client's private data. Plain ``.npy`` arrays, read with ``allow_pickle=False``.
``dataset`` (str)
    For demos instead of ``data-dir``: a public dataset name; the node keeps partition ``partition-id`` of it,
    split with the experiment's seed exactly as in simulation.
``device-tier`` (str, optional)
    The tier of the device profile this node is (its model and training settings); default: the profile's
    assignment for ``partition-id``.
``state-dir`` (str, optional)
    Where the client keeps its state between rounds for a resumed run (:mod:`fl_kd.kd.progress`); default:
    ``client-state/`` in ``data-dir``, else the run config's choice.

With neither ``data-dir`` nor ``dataset`` the node is a simulated one (``{"partition-id", "num-partitions"}``) and
the caller keeps its in-memory partitioning. This module knows no Flower: it parses a plain mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "NODE_DATA_FILES",
    "NodeConfigError",
    "NodeData",
    "NodeSpec",
    "load_node_data",
    "node_spec",
    "write_node_data",
]

#: Node config keys (Flower's own ``partition-id``/``num-partitions`` keep their simulation meaning).
PARTITION_ID, NUM_PARTITIONS, DATA_DIR, DATASET, DEVICE_TIER, STATE_DIR = (
    "partition-id",
    "num-partitions",
    "data-dir",
    "dataset",
    "device-tier",
    "state-dir",
)
NODE_CONFIG_KEYS = (PARTITION_ID, NUM_PARTITIONS, DATA_DIR, DATASET, DEVICE_TIER, STATE_DIR)

#: Files of a node's data folder: required training arrays, then the optional own test set.
NODE_DATA_FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")


class NodeConfigError(ValueError):
    """A node config or node data folder that cannot be used; the message names the key or file."""


@dataclass(frozen=True)
class NodeSpec:
    """A node's identity and where its data is (see the module docstring for the keys)."""

    client_id: int
    num_partitions: int | None = None
    data_dir: Path | None = None
    dataset: str | None = None
    device_tier: str | None = None
    state_dir: Path | None = None

    @property
    def node_local(self) -> bool:
        """Whether the node names its own data (a deployed node) rather than relying on in-memory partitioning."""
        return self.data_dir is not None or self.dataset is not None

    def check_federation(self, num_clients: int) -> None:
        """Raise :class:`NodeConfigError` if this node cannot be a client of a federation of ``num_clients``."""
        if not 0 <= self.client_id < num_clients:
            raise NodeConfigError(f"node config {PARTITION_ID}={self.client_id} is not in [0, {num_clients})")
        if self.num_partitions is not None and self.num_partitions != num_clients:
            raise NodeConfigError(
                f"node config {NUM_PARTITIONS}={self.num_partitions} but the experiment has {num_clients} clients"
            )


def node_spec(node_config: Mapping[str, object]) -> NodeSpec:
    """Parse a node config; an unknown key, a missing or mistyped value, or both data sources is an error.

    Raises
    ------
    NodeConfigError
        Naming the key and what was wrong with it.
    """
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if unknown:
        raise NodeConfigError(f"unknown node config key(s) {unknown}; known: {list(NODE_CONFIG_KEYS)}")
    if PARTITION_ID not in node_config:
        raise NodeConfigError(f"node config has no {PARTITION_ID} (the client id)")
    client_id = _int(node_config, PARTITION_ID)
    num_partitions = _int(node_config, NUM_PARTITIONS) if NUM_PARTITIONS in node_config else None
    data_dir, dataset, tier = (_text(node_config, key) for key in (DATA_DIR, DATASET, DEVICE_TIER))
    if data_dir is not None and dataset is not None:
        raise NodeConfigError(f"node config names both {DATA_DIR} and {DATASET}; give one source of private data")
    if num_partitions is not None and num_partitions < 1:
        raise NodeConfigError(f"node config {NUM_PARTITIONS} must be >= 1, got {num_partitions}")
    if client_id < 0:
        raise NodeConfigError(f"node config {PARTITION_ID} must be >= 0, got {client_id}")
    if num_partitions is not None and client_id >= num_partitions:
        raise NodeConfigError(f"node config {PARTITION_ID}={client_id} is not one of {NUM_PARTITIONS}={num_partitions}")
    folder = None if data_dir is None else Path(data_dir).expanduser()
    state_dir = _text(node_config, STATE_DIR)
    state = None if state_dir is None else Path(state_dir).expanduser()
    return NodeSpec(client_id, num_partitions, folder, dataset, tier, state)


def _int(node_config: Mapping[str, object], key: str) -> int:
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeConfigError(f"node config {key} must be an int, got {value!r}")
    return value


def _text(node_config: Mapping[str, object], key: str) -> str | None:
    if key not in node_config:
        return None
    value = node_config[key]
    if not isinstance(value, str) or not value:
        raise NodeConfigError(f'node config {key} must be a non-empty string (quote it: {key}="..."), got {value!r}')
    return value


@dataclass(frozen=True)
class NodeData:
    """A node's private data: ``x_train`` ``(N, *input_shape)`` float32, ``y_train`` ``(N,)`` int64, and optionally
    its own test set in the same form (``None`` when the folder has none)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def load_node_data(
    folder: str | Path, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
) -> NodeData:
    """Read a node's data folder, checked against the experiment's input shape and number of classes.

    Parameters
    ----------
    folder : str | Path
        Folder with ``x_train.npy`` and ``y_train.npy`` (and optionally ``x_test.npy`` with ``y_test.npy``).
    input_shape : tuple[int, ...] | None (default: None)
        Shape of one example the models expect, e.g. ``(1, 8, 8)``; not checked when None.
    num_classes : int | None (default: None)
        Labels must lie in ``[0, num_classes)``; not checked when None.

    Raises
    ------
    NodeConfigError
        A missing folder or file, a file that is not a plain ``.npy`` array, a non-finite or non-float input,
        non-integer or out-of-range labels, or inputs and labels of different lengths. Each names the file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NodeConfigError(f"node data folder {folder} does not exist")
    x_train = _inputs(folder / NODE_DATA_FILES[0], input_shape)
    y_train = _labels(folder / NODE_DATA_FILES[1], len(x_train), num_classes)
    if len(y_train) == 0:
        raise NodeConfigError(f"node data folder {folder}: {NODE_DATA_FILES[0]} holds no examples")
    x_path, y_path = folder / NODE_DATA_FILES[2], folder / NODE_DATA_FILES[3]
    if x_path.exists() != y_path.exists():
        raise NodeConfigError(f"node data folder {folder}: give both {x_path.name} and {y_path.name}, or neither")
    if not x_path.exists():
        return NodeData(x_train, y_train)
    x_test = _inputs(x_path, input_shape)
    if len(x_test) == 0:
        raise NodeConfigError(f"node data folder {folder}: {x_path.name} holds no examples")
    return NodeData(x_train, y_train, x_test, _labels(y_path, len(x_test), num_classes))


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise NodeConfigError(f"node data file {path} is missing")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise NodeConfigError(f"node data file {path} is not a plain .npy array ({err})") from None
    except MemoryError:  # a header that declares far more than the file holds
        raise NodeConfigError(f"node data file {path} declares an array too large to load") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive whatever the file is named
        raise NodeConfigError(f"node data file {path} is not a plain .npy array (an .npz archive)")
    return array


def _inputs(path: Path, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    array = _read(path)
    if array.dtype.kind != "f":
        raise NodeConfigError(f"{path}: inputs must be floats, got {array.dtype}")
    if input_shape is not None and tuple(array.shape[1:]) != tuple(input_shape):
        raise NodeConfigError(f"{path}: examples of shape {array.shape[1:]}, the models expect {tuple(input_shape)}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf here, and is refused below
        inputs = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(inputs).all():
        raise NodeConfigError(f"{path}: inputs hold NaN or inf, or values beyond float32's range")
    return torch.from_numpy(inputs)


def _labels(path: Path, count: int, num_classes: int | None) -> torch.Tensor:
    array = _read(path)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise NodeConfigError(f"{path}: labels must be a 1-D integer array, got {array.dtype} {array.shape}")
    if len(array) != count:
        raise NodeConfigError(f"{path}: {len(array)} labels for {count} examples")
    if array.size and (array.min() < 0 or (num_classes is not None and array.max() >= num_classes)):
        raise NodeConfigError(f"{path}: labels must lie in [0, {num_classes}), got {array.min()}..{array.max()}")
    return torch.from_numpy(array.astype(np.int64))


def write_node_data(
    folder: str | Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Path:
    """Write a node's data folder in the layout :func:`load_node_data` reads; return the folder.

    Each file is written beside its final name and then renamed, so a reader never sees half a file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: list[np.ndarray] = [np.asarray(x_train, np.float32), np.asarray(y_train, np.int64)]
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is not None and y_test is not None:
        arrays += [np.asarray(x_test, np.float32), np.asarray(y_test, np.int64)]
    for name, array in zip(NODE_DATA_FILES, arrays, strict=False):
        temporary = folder / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(temporary, folder / name)
    return folder
