"""ClientApp of vertical (split) federated learning: one node is the label party, every other one a feature party.

The party's role comes from :func:`fl_kd.vfl.protocol.party_role`, the one mapping from a node's ``node_config``
used in simulation and in deployment. Every handler takes its party from ``context.state`` (or the live party this
process saved there: :mod:`fl_kd.clients.vfl_party`), runs one protocol step of :mod:`fl_kd.vfl` and saves the party
again. The attacking feature party logs what it observes (:class:`~fl_kd.vfl.attacks.ObservationLog`) and replays it
through fresh attacks when asked for the attack results, so the attacks see exactly what they would see live.
Importing this module in Flower's simulation engine makes the engine hand over messages at once
(:mod:`fl_kd.clients.vfl_engine`).

See :mod:`fl_kd.vfl.protocol` for the messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues, MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from torch import Tensor

from fl_kd.clients import vfl_engine
from fl_kd.clients.vfl_batches import (
    check_embed_order,
    embedded_ids,
    forget_embedded,
    last_step,
    save_embedded,
    save_step,
)
from fl_kd.clients.vfl_party import (
    Node,
    load_party,
    node_of,
    observation_log,
    positions,
    rows,
    save_alignment,
    save_label_secret,
    save_observation_log,
    save_party,
    take_party,
)
from fl_kd.protocol import party_text, record
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.attacks import build_attacks, score_attacks
from fl_kd.vfl.parties import FeatureParty, LabelParty, as_sample_ids
from fl_kd.vfl.protocol import PartyRole, party_role
from fl_kd.vfl.split import align_samples
from fl_kd.vfl.trainer import PREDICT_BATCH_SIZE, prediction_metrics

__all__ = ["PartyRole", "app", "load_party", "party_role"]

app = ClientApp()
vfl_engine.install()  # in a simulation engine's process: messages reach the ClientApp as soon as they are sent


# -- helpers shared by the handlers ----------------------------------------------------------------------------------
def _node_for(msg: Message, context: Context, role: str) -> Node:
    """This node, after checking that ``msg`` is meant for a party of ``role``."""
    node = node_of(context)
    if node.role.role != role:
        raise ValueError(
            f"{msg.metadata.message_type} is for the {role} party; this node is the {node.role.role} party"
        )
    return node


def _feature_party(msg: Message, context: Context) -> tuple[Node, FeatureParty]:
    node = _node_for(msg, context, vp.FEATURE)
    party = take_party(context, node)
    assert isinstance(party, FeatureParty)
    return node, party


def _label_party(msg: Message, context: Context) -> tuple[Node, LabelParty]:
    node = _node_for(msg, context, vp.LABEL)
    party = take_party(context, node)
    assert isinstance(party, LabelParty)
    return node, party


def _tensors(msg: Message, *keys: str) -> list[Tensor]:
    """The arrays ``keys`` of the request as tensors; ``ValueError`` naming the first one that is missing."""
    found = [vp.tensor_of(msg.content, key) for key in keys]
    missing = [key for key, tensor in zip(keys, found, strict=True) if tensor is None]
    if missing:
        raise ValueError(f"the message lacks {missing[0]}")
    return [tensor for tensor in found if tensor is not None]


def _ids(msg: Message, key: str) -> Tensor:
    """Sample ids ``key``: a 1-D integer array (``ProtocolError``, a ``ValueError``, otherwise)."""
    return torch.from_numpy(vp.ids_of(msg.content, key))


def _blocks(msg: Message, node: Node, rows: int | None, *keys: str) -> list[Tensor]:
    """Embeddings or gradients ``keys``: float32 ``(rows, D)``, finite, each row's norm within ``training.max_norm``.

    Anything else (another dtype, shape, a value out of bound) raises ``ValueError`` before any state changes.
    """
    for key in keys:  # from the headers first: a block of another dtype or shape is refused before it decodes
        header = record(msg.content, vp.ARRAYS).get(key)
        if header is not None and (getattr(header, "dtype", None) != "float32" or not _fits(header.shape, rows)):
            declared = f"dtype {party_text(header.dtype, 40)} and shape {party_text(header.shape, 80)}"
            raise ValueError(f"{key} declares {declared}, expected float32 ({'B' if rows is None else rows}, D)")
    found = _tensors(msg, *keys)
    for key, tensor in zip(keys, found, strict=True):
        problem = vp.float_block_problem(tensor.numpy(), rows, node.cfg.training.max_norm)
        if problem is not None:
            raise ValueError(f"{key} has {problem}")
    return found


def _fits(shape: Any, rows: int | None) -> bool:
    """Whether a declared shape is two-dimensional with ``rows`` rows (any when None)."""
    return isinstance(shape, (list, tuple)) and len(shape) == 2 and (rows is None or shape[0] == rows)


def _reply(msg: Message, **records: ArrayRecord | MetricRecord | ConfigRecord) -> Message:
    return Message(RecordDict(dict(records)), reply_to=msg)


def _arrays(arrays: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(array)) for key, array in arrays.items()})


# -- handlers --------------------------------------------------------------------------------------------------------
@app.query("sample_ids")
def sample_ids(msg: Message, context: Context) -> Message:
    """Say which party this node is and which samples it holds, for the server to align; the label party also says
    how many classes its task has, so that a run that cannot use them stops before any party is set up."""
    node = node_of(context)
    config: dict[str, ConfigRecordValues] = {vp.ROLE: node.role.role, vp.PARTY_ID: node.role.party_id}
    if node.role.is_label:
        config[vp.NUM_CLASSES] = node.num_classes
    return _reply(
        msg,
        config=ConfigRecord(config),
        arrays=_arrays({vp.TRAIN_IDS: node.train_ids, vp.TEST_IDS: node.test_ids}),
    )


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    """Keep the shared samples (in the server's order) and build a fresh party; the label party sets up its defence."""
    node = node_of(context)
    aligned = {}
    for split, key, own in (("train", vp.TRAIN_IDS, node.train_ids), ("test", vp.TEST_IDS, node.test_ids)):
        shared = vp.ids_of(msg.content, key)
        mine = align_samples([own, shared])[0]
        if len(mine) != len(shared):
            raise ValueError(f"this party lacks {len(shared) - len(mine)} of the shared {split} sample ids")
        aligned[split] = mine
    save_alignment(context, aligned, node.cfg.training.party_state == "node")
    if node.role.is_label:
        save_label_secret(context, node)
    party = load_party(context, node)
    save_party(context, party, node.cfg.training.party_state == "node")
    metrics: dict[str, MetricRecordValues] = {vp.NUM_TRAIN: len(aligned["train"]), vp.NUM_TEST: len(aligned["test"])}
    if isinstance(party, LabelParty):
        metrics.update({vp.embedding_dim_key(k): dim for k, dim in enumerate(party.embedding_dims)})
        metrics[vp.NUM_CLASSES] = party.num_classes
    else:
        metrics[vp.EMBEDDING_DIM] = node.cfg.vfl_model.embedding_size(node.num_classes)
    return _reply(msg, metrics=MetricRecord(metrics))


def _batches(
    msg: Message, node: Node, party: FeatureParty | LabelParty, key: str = vp.BATCHES, optional: bool = False
) -> list[int]:
    """The batch indices a training request names: at most a message's worth, each once and within an epoch."""
    training = node.cfg.training
    per_epoch = math.ceil(party.num_samples / training.batch_size)
    return vp.batches_of(msg.content, key, optional, most=training.batches_per_message, below=per_epoch)


def _embed_request(msg: Message, context: Context, node: Node, party: FeatureParty) -> tuple[int, dict[int, Tensor]]:
    """The epoch a request asks to embed in and the sample ids of each of its batches, after every batch embedded
    before and each within the party's samples: checked whole, so a bad request raises before anything changes."""
    epoch = vp.epoch_of(msg.content, node.cfg.training.epochs)
    batches = _batches(msg, node, party)
    check_embed_order(context, epoch, batches)
    return epoch, {b: as_sample_ids(_ids(msg, vp.ids_key(b)), party.num_samples) for b in batches}


def _embed_batches(
    context: Context, node: Node, party: FeatureParty, epoch: int, ids: Mapping[int, Tensor]
) -> dict[str, Any]:
    """Embeddings ``(B, D)`` of each batch of ``ids`` (:func:`_embed_request`) of ``epoch``, all from the bottom model
    as it is now, by key."""
    embeddings = {b: party.embed(batch).detach().numpy() for b, batch in ids.items()}
    save_embedded(context, epoch, {b: batch.numpy() for b, batch in ids.items()})
    if node.is_attacker:
        observations = observation_log(context)
        observations.sent(embeddings)
        save_observation_log(context, observations)
    return {vp.embedding_key(b): e for b, e in embeddings.items()}


def _apply_batches(
    msg: Message, context: Context, node: Node, party: FeatureParty, epoch: int, batches: list[int]
) -> dict[str, ConfigRecordValues]:
    """Back-propagate each gradient of ``batches`` in order; why each refused one was refused, by key."""
    observations = observation_log(context) if node.is_attacker else None
    rejected: dict[str, ConfigRecordValues] = {}
    for b in batches:
        try:
            ids = _ids(msg, vp.ids_key(b))
            embedded = embedded_ids(context, epoch, b)
            if embedded is None or not np.array_equal(embedded, ids.numpy()):
                raise ValueError(f"batch {b} of epoch {epoch}: these are not the sample ids this party embedded")
            (gradient,) = _blocks(msg, node, len(ids), vp.gradient_key(b))
            if observations is not None:
                observations.observe(b, ids.numpy(), gradient.numpy())
            party.apply_gradient(ids, gradient)
            forget_embedded(context, b)
        except ValueError as err:
            log(WARNING, "feature party %d: gradient of batch %d refused: %s", node.role.party_id, b, err)
            rejected[vp.rejected_key(b)] = str(err)
    if observations is not None:
        save_observation_log(context, observations)
    return rejected


@app.query("embed")
def embed(msg: Message, context: Context) -> Message:
    """Embeddings ``(B, D)`` of each asked batch, all from the bottom model as it is now."""
    node, party = _feature_party(msg, context)
    epoch, ids = _embed_request(msg, context, node, party)
    embeddings = _embed_batches(context, node, party, epoch, ids)
    save_party(context, party, node.cfg.training.party_state == "node")  # the step counter seeds the next forward pass
    return _reply(msg, arrays=_arrays(embeddings))


@app.train("loss_and_gradients")
def loss_and_gradients(msg: Message, context: Context) -> Message:
    """One training step per batch, in order; the gradient for every feature party, or why a batch was rejected."""
    node, party = _label_party(msg, context)
    epoch = vp.epoch_of(msg.content, node.cfg.training.epochs)
    grads: dict[str, Any] = {}
    losses: dict[str, MetricRecordValues] = {}
    rejected: dict[str, ConfigRecordValues] = {}
    for b in _batches(msg, node, party):
        keys = [vp.ids_key(b)] + [vp.embedding_key(b, k) for k in range(node.cfg.num_feature_parties)]
        try:
            last = last_step(context)
            if last is not None and (epoch, b) <= last:  # a request delivered twice would step on its batches again
                raise ValueError(f"batch {b} of epoch {epoch} is not after the last step (batch {last[1]} of epoch "
                                 f"{last[0]})")  # fmt: skip
            ids = _ids(msg, keys[0])
            embeddings = _blocks(msg, node, len(ids), *keys[1:])
            loss, party_grads = party.train_step(ids, embeddings)
        except ValueError as err:  # raised before any update: the batch is skipped, nothing else changes
            log(WARNING, "label party: batch %d rejected: %s", b, err)
            rejected[vp.rejected_key(b)] = str(err)
            continue
        save_step(context, epoch, b)
        losses[vp.loss_key(b)] = loss
        grads.update({vp.gradient_key(b, k): gradient.numpy() for k, gradient in enumerate(party_grads)})
    save_party(context, party, node.cfg.training.party_state == "node")
    return _reply(msg, arrays=_arrays(grads), metrics=MetricRecord(losses), config=ConfigRecord(rejected))


@app.train("apply_gradients")
def apply_gradients(msg: Message, context: Context) -> Message:
    """Back-propagate each received gradient in order; a malformed one is refused and leaves the model untouched."""
    node, party = _feature_party(msg, context)
    epoch = vp.epoch_of(msg.content, node.cfg.training.epochs)
    batches = _batches(msg, node, party)
    rejected = _apply_batches(msg, context, node, party, epoch, batches)
    save_party(context, party, node.cfg.training.party_state == "node")
    return _reply(msg, config=ConfigRecord(rejected))


@app.train("apply_and_embed")
def apply_and_embed(msg: Message, context: Context) -> Message:
    """The previous round's gradients (``config.apply``), then the embeddings of this round's batches.

    Plain split training's order in one message, so a mini-batch costs two exchanges instead of three. A party
    that fails to embed answers with an error, and the server counts those gradients as not applied.
    """
    node, party = _feature_party(msg, context)
    epoch, ids = _embed_request(msg, context, node, party)  # refused before any gradient changes the party
    applied = _batches(msg, node, party, vp.APPLY, optional=True)
    rejected = _apply_batches(msg, context, node, party, epoch, applied)
    embeddings = _embed_batches(context, node, party, epoch, ids)
    save_party(context, party, node.cfg.training.party_state == "node")
    return _reply(msg, arrays=_arrays(embeddings), config=ConfigRecord(rejected))


@app.evaluate("embed_test")
def embed_test(msg: Message, context: Context) -> Message:
    """Embeddings ``(N_test, D)`` of the aligned test samples, in the chunks ``fl_kd.vfl.predict_vfl`` uses."""
    node, party = _feature_party(msg, context)
    features = rows(node.test_features, positions(context, "test"))
    assert features is not None
    chunks = [party.infer(features[s : s + PREDICT_BATCH_SIZE]) for s in range(0, len(features), PREDICT_BATCH_SIZE)]
    return _reply(msg, arrays=_arrays({vp.TEST_EMBEDDING: torch.cat(chunks).numpy()}))


@app.evaluate("predict")
def predict(msg: Message, context: Context) -> Message:
    """Main-task performance on the aligned test samples from the feature parties' test embeddings."""
    node, party = _label_party(msg, context)
    at = positions(context, "test")
    own, labels = rows(node.test_features, at), rows(node.test_labels, at)
    assert labels is not None
    keys = [vp.evaluation_embedding_key(k) for k in range(node.cfg.num_feature_parties)]
    embeddings = _blocks(msg, node, len(labels), *keys)
    chunks = []
    for s in range(0, len(labels), PREDICT_BATCH_SIZE):
        own_chunk = None if own is None else own[s : s + PREDICT_BATCH_SIZE]
        chunks.append(party.predict([e[s : s + PREDICT_BATCH_SIZE] for e in embeddings], own_chunk))
    metrics = prediction_metrics(torch.cat(chunks), labels)
    record: dict[str, MetricRecordValues] = {vp.ACCURACY: metrics["accuracy"], vp.NUM_SAMPLES: metrics["num_samples"]}
    if "auc" in metrics:
        record[vp.AUC] = metrics["auc"]
    return _reply(msg, metrics=MetricRecord(record))


@app.evaluate("train_labels")
def train_labels(msg: Message, context: Context) -> Message:
    """The aligned training labels, for the evaluation harness to score attacks with: only in a run that scores
    attacks, so a run without one never sends them, whoever asks."""
    node = _node_for(msg, context, vp.LABEL)
    if not node.cfg.attack:
        raise ValueError("this run scores no attack: the label party sends no labels")
    labels = rows(node.train_labels, positions(context, "train"))
    assert labels is not None
    return _reply(msg, arrays=_arrays({vp.LABELS: labels.numpy()}))


@app.evaluate("attack_results")
def attack_results(msg: Message, context: Context) -> Message:
    """Replay what this party observed through fresh attacks and score them against the true training labels."""
    node, party = _feature_party(msg, context)
    if not node.is_attacker:
        raise ValueError(
            f"feature party {node.role.party_id} runs no attacks (attacker_party={node.cfg.attacker_party})"
        )
    (labels,) = _tensors(msg, vp.LABELS)
    problem = vp.labels_problem(labels.numpy(), len(positions(context, "train")), node.num_classes)
    if problem is not None:  # checked before any attack runs: floats would be truncated into classes, not refused
        raise ValueError(f"training labels refused: {problem}")
    attacks = build_attacks(node.cfg.attack)
    observation_log(context).replay(attacks.values())
    for attack in attacks.values():
        attack.after_training(party.bottom_model, party.features)
    results = score_attacks(attacks, labels)
    return _reply(msg, config=ConfigRecord({vp.RESULTS: json.dumps(results)}))
