"""The message protocol of vertical FL over Flower: names, keys and how the run config travels.

The ServerApp (:mod:`fl_kd.strategies.vfl`) and the ClientApp (:mod:`fl_kd.clients.vfl_app`) both read this
module, so neither side spells a message type or record key of its own. Messages (server to party; ``<b>`` is a
batch's index in its epoch, ``<k>`` a feature party):

=============================  ==================  ===============================  ================================
message type                   sent to             carries                          reply
=============================  ==================  ===============================  ================================
``query.sample_ids``           every node          -                                role, party-id (label: classes);
                                                                                    own sample ids
``train.setup``                every node          the shared (aligned) sample ids  sizes; embedding sizes, classes
``query.embed``                feature parties     ``ids.<b>``                      ``emb.<b>``
``train.loss_and_gradients``   label party         ``ids.<b>``, ``emb.<k>.<b>``     ``loss.<b>``, ``grad.<k>.<b>``
``train.apply_gradients``      each feature party  ``ids.<b>``, its ``grad.<b>``    ``rejected.<b>`` if refused
``train.apply_and_embed``      each feature party  both of the above                both of the above
``evaluate.embed_test``        feature parties     -                                ``emb`` of the test samples
``evaluate.predict``           label party         ``emb.<k>``                      MP: accuracy (and AUC)
``evaluate.train_labels``      label party         -                                aligned training labels
``evaluate.attack_results``    attacking party     training labels                  attack results (JSON)
=============================  ==================  ===============================  ================================

``train.apply_and_embed`` applies the gradients of the batches in ``config.apply`` (the previous round), then embeds
those in ``config.batches``: the order of plain split training in one round trip instead of two, so a mini-batch
costs two exchanges, not three, and the results are the same.

Arrays travel in the record ``arrays``, scalars in ``config`` (and losses and MP in ``metrics``). The last two
messages exist only for the evaluation harness: scoring a label-inference attack needs the true labels. Like
:mod:`fl_kd.protocol`, whose defensive readers it uses, this module never imports Flower.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl_kd.config import from_mapping, to_mapping
from fl_kd.protocol import ProtocolError, array_of, record, scalar_of
from fl_kd.vfl.config import VFLRunConfig

#: Run-config key of the run, as JSON of :class:`~fl_kd.vfl.config.VFLRunConfig` (Flower run-config values
#: are scalars).
CONFIG_KEY = "fl-kd-vfl-config"
#: Run-config key of the folder that receives :data:`RESULTS_FILE` and :data:`PROGRESS_FILE`.
OUTPUT_KEY = "output-dir"
RESULTS_FILE = "results.json"
#: One JSON line per epoch, written by the ServerApp as training goes (the console follows it).
PROGRESS_FILE = "epochs.jsonl"

# Message types.
SAMPLE_IDS = "query.sample_ids"
SETUP = "train.setup"
EMBED = "query.embed"
LOSS_AND_GRADIENTS = "train.loss_and_gradients"
APPLY_GRADIENTS = "train.apply_gradients"
APPLY_AND_EMBED = "train.apply_and_embed"
EMBED_TEST = "evaluate.embed_test"
PREDICT = "evaluate.predict"
TRAIN_LABELS = "evaluate.train_labels"
ATTACK_RESULTS = "evaluate.attack_results"

# Roles.
LABEL = "label"
FEATURE = "feature"

# Records of a message's content.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Keys inside the records.
ROLE = "role"
PARTY_ID = "party-id"
TRAIN_IDS = "train-ids"
TEST_IDS = "test-ids"
EPOCH = "epoch"
BATCHES = "batches"
#: Batches whose gradients a ``train.apply_and_embed`` request carries, applied before it embeds ``batches``.
APPLY = "apply"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
EMBEDDING_DIM = "embedding-dim"
#: The label party's class count (its ``train.setup`` reply), against which its training labels are checked.
NUM_CLASSES = "num-classes"
TEST_EMBEDDING = "emb"
ACCURACY = "accuracy"
NUM_SAMPLES = "num-samples"
AUC = "auc"
LABELS = "labels"
RESULTS = "results"


def ids_key(batch: int) -> str:
    """Sample ids ``(B,)`` of batch ``batch``."""
    return f"ids.{batch}"


def embedding_key(batch: int, party: int | None = None) -> str:
    """A feature party's embedding of ``batch``: its own key, or ``party``'s key in the label party's request."""
    return f"emb.{batch}" if party is None else f"emb.{party}.{batch}"


def gradient_key(batch: int, party: int | None = None) -> str:
    """A feature party's gradient of ``batch``: in its own request, or ``party``'s in the label party's reply."""
    return f"grad.{batch}" if party is None else f"grad.{party}.{batch}"


def evaluation_embedding_key(party: int) -> str:
    """Feature party ``party``'s test embedding in the label party's ``predict`` request."""
    return f"emb.{party}"


def loss_key(batch: int) -> str:
    """The label party's loss on ``batch``."""
    return f"loss.{batch}"


def rejected_key(batch: int) -> str:
    """Why a party refused ``batch`` (present only when it did)."""
    return f"rejected.{batch}"


def embedding_dim_key(party: int) -> str:
    """The embedding size the label party expects of feature party ``party``."""
    return f"{EMBEDDING_DIM}.{party}"


# -- the run config ------------------------------------------------------------------------------------------------
def encode_config(config: VFLRunConfig) -> str:
    """The run as JSON for the run config."""
    return json.dumps(to_mapping(config))


def decode_config(text: str) -> VFLRunConfig:
    """Inverse of :func:`encode_config`; a wrong key, type or value raises ``fl_kd.config.ConfigError``."""
    return from_mapping(VFLRunConfig, json.loads(text))


# -- roles ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartyRole:
    """What a node is in the run: the label party, or feature party ``party_id`` (0-based)."""

    role: str
    party_id: int

    @property
    def is_label(self) -> bool:
        """Whether this node holds the labels."""
        return self.role == LABEL


def party_role(node_config: Mapping[str, Any], num_feature_parties: int) -> PartyRole:
    """A node's role from its ``node_config``, in simulation and deployment alike.

    Deployment SuperNodes say it explicitly: ``role="label"``, or ``role="feature"`` with ``party-id=<k>``. A
    simulated SuperNode only has ``partition-id`` and ``num-partitions``; there the last partition is the label
    party and partition ``k`` is feature party ``k``.

    Raises
    ------
    ValueError
        On an unknown role, a missing or out-of-range party id, or a simulated federation of the wrong size.
    """
    if ROLE in node_config:
        role = str(node_config[ROLE])
        if role == LABEL:
            return PartyRole(LABEL, -1)
        if role != FEATURE:
            raise ValueError(f"node_config role must be {LABEL!r} or {FEATURE!r}, got {role!r}")
        if PARTY_ID not in node_config:
            raise ValueError(f"a feature party needs {PARTY_ID} in its node_config")
        party_id = int(node_config[PARTY_ID])
    else:
        partition, size = int(node_config["partition-id"]), int(node_config["num-partitions"])
        if size != num_feature_parties + 1:
            raise ValueError(
                f"the run needs {num_feature_parties + 1} nodes ({num_feature_parties} feature parties and one "
                f"label party), the simulated federation has {size}"
            )
        if partition == size - 1:
            return PartyRole(LABEL, -1)
        party_id = partition
    if not 0 <= party_id < num_feature_parties:
        raise ValueError(f"{PARTY_ID} {party_id} is not one of the {num_feature_parties} feature parties")
    return PartyRole(FEATURE, party_id)


# -- reading a message ---------------------------------------------------------------------------------------------
def tensor_of(content: Any, key: str) -> Tensor | None:
    """Array ``key`` of the ``arrays`` record as a (writable) tensor; ``None`` when absent.

    Raises :class:`~fl_kd.protocol.ProtocolError` when the array does not decode.
    """
    array = array_of(content, ARRAYS, key)
    # Copied: a record's buffer is read-only, and torch wants memory it may write.
    return None if array is None else torch.from_numpy(np.array(array, copy=True))


def float_block_problem(array: Any, rows: int | None, max_norm: float, cols: int | None = None) -> str | None:
    """Why ``array`` is no usable embedding or gradient, or None: a finite float32 ``(rows, cols)`` block whose
    rows each have an L2 norm of at most ``max_norm`` (``None`` leaves a dimension free).

    Integer, bool, complex and float64 arrays are refused, not cast: the protocol moves float32.
    """
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        return f"dtype {getattr(array, 'dtype', type(array).__name__)}, expected float32"
    # Shape is read only once the array is known to have two dimensions: a 0-d array has no shape[0] to compare.
    if (
        array.ndim != 2
        or (rows is not None and array.shape[0] != rows)
        or (cols is not None and array.shape[1] != cols)
    ):
        return f"shape {array.shape}, expected ({'B' if rows is None else rows}, {'D' if cols is None else cols})"
    if not np.isfinite(array).all():
        return "NaN or inf"
    if array.size and float(np.linalg.norm(array.astype(np.float64), axis=1).max()) > max_norm:
        return f"a row's norm is beyond the bound {max_norm:g}"
    return None


def ids_of(content: Any, key: str) -> np.ndarray:
    """The sample ids ``key`` (a 1-D integer array) of the ``arrays`` record as int64.

    Raises
    ------
    ProtocolError
        When they are missing or not a 1-D integer array.
    """
    array = array_of(content, ARRAYS, key)
    if array is None or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ProtocolError(f"a party sent no valid {key}")
    return array.astype(np.int64)


def batches_of(
    content: Any, key: str = BATCHES, optional: bool = False, most: int | None = None, below: int | None = None
) -> list[int]:
    """The batch indices a request names (``config.batches``, or ``key``; none when ``optional`` and absent), each
    at most once, none negative, at most ``most`` of them (``training.batches_per_message``) and each under
    ``below`` (an epoch's batches) when given."""
    batches = scalar_of(content, CONFIG, key)
    if batches is None and optional:
        return []
    if not isinstance(batches, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in batches):
        raise ProtocolError(f"a request names no valid {key}: {str(batches)[:80]}")
    if any(b < 0 for b in batches) or len(set(batches)) != len(batches):
        # A batch named twice would be stepped on twice, with one loss and one gradient to show for it.
        raise ProtocolError(f"a request names a negative or repeated batch in {key}: {str(batches)[:80]}")
    if most is not None and len(batches) > most:
        raise ProtocolError(f"a request names {len(batches)} batches in {key}, more than the run's {most} a message")
    if below is not None and batches and max(batches) >= below:
        # The label party steps in (epoch, batch) order: one batch past the epoch would lock out the rest of it.
        raise ProtocolError(f"a request names batch {max(batches)} in {key}, beyond the epoch's {below} batches")
    return list(batches)


def epoch_of(content: Any, epochs: int) -> int:
    """The training epoch a request names (``config.epoch``), an int in ``[0, epochs)``."""
    epoch = scalar_of(content, CONFIG, EPOCH)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < epochs:
        raise ProtocolError(f"a request names no {EPOCH} in [0, {epochs}): {str(epoch)[:40]!r}")
    return epoch


def config_of(content: Any) -> Mapping[str, Any]:
    """The ``config`` record of a message (empty when absent)."""
    return record(content, CONFIG)


def metrics_of(content: Any) -> Mapping[str, Any]:
    """The ``metrics`` record of a message (empty when absent)."""
    return record(content, METRICS)


def labels_problem(labels: Any, num_train: int, num_classes: int | None) -> str | None:
    """Why ``labels`` are no usable training labels, or None: a 1-D int64 array of ``num_train`` classes in
    ``[0, num_classes)`` (``num_classes`` None: any non-negative class).

    Other integer types are refused, not cast, as embeddings are: the label party sends int64.
    """
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64:
        return f"dtype {getattr(labels, 'dtype', type(labels).__name__)}, expected int64"
    if labels.shape != (num_train,):
        return f"shape {labels.shape}, expected ({num_train},)"
    if labels.size and int(labels.min()) < 0:
        return f"a negative class {int(labels.min())}"
    if labels.size and num_classes is not None and int(labels.max()) >= num_classes:
        return f"class {int(labels.max())} in a task of {num_classes} classes"
    return None
