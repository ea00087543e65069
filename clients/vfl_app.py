"""ClientApp of vertical (split) federated learning: one node is the label party, every other one a feature party.

The party's role comes from :func:`party_role`, the one mapping from a node's ``node_config`` used in simulation
and in deployment. The party object is rebuilt for every message, since the ClientApp does not persist: its
models live in ``context.state`` as ``ArrayRecord``\\ s, and its optimiser, step counter and defence state (random
generators, CoAE's autoencoder, ...) as a ``torch.save`` blob next to them, so a rebuilt party continues exactly
where it stopped. The attacking feature party also keeps in ``context.state`` every (ids, embedding, gradient) it
observed, and replays them through fresh attack objects when asked for the attack results; the attacks therefore
see exactly what they would see live, at a memory cost of one embedding and one gradient per sample and epoch.

See :mod:`fl_kd.strategies.vfl` for the message protocol.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import ConfigRecordValues, MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.strategies.vfl import CONFIG_KEY, FEATURE, LABEL, VFLAppConfig, record_of, score_attacks
from fl_kd.vfl.experiment import VFLData, build_feature_party, build_label_party, embedding_size, prepare_data
from fl_kd.vfl.parties import FeatureParty, LabelParty
from fl_kd.vfl.split import align_samples
from fl_kd.vfl.trainer import PREDICT_BATCH_SIZE, prediction_metrics

ALIGNMENT = "vfl-alignment"
PARTY_STATE = "vfl-party"
MODEL_PREFIX = "vfl-model-"
SENT = "vfl-sent"
OBSERVED = "vfl-observed"

app = ClientApp()


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
    if "role" in node_config:
        role = str(node_config["role"])
        if role == LABEL:
            return PartyRole(LABEL, -1)
        if role != FEATURE:
            raise ValueError(f"node_config role must be {LABEL!r} or {FEATURE!r}, got {role!r}")
        if "party-id" not in node_config:
            raise ValueError("a feature party needs party-id in its node_config")
        party_id = int(node_config["party-id"])
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
        raise ValueError(f"party-id {party_id} is not one of the {num_feature_parties} feature parties")
    return PartyRole(FEATURE, party_id)


@functools.lru_cache(maxsize=4)
def _run(config_json: str) -> tuple[VFLAppConfig, VFLData]:
    # Simulation actors are reused across nodes and messages: load and cut the data once per process. Each node
    # keeps only its own columns below; a deployment would load just those.
    cfg = VFLAppConfig.from_json(config_json)
    return cfg, prepare_data(cfg.vfl)


@dataclass
class _Holdings:
    """What this node holds: its sample ids and, before alignment, its rows."""

    train_ids: NDArray[np.int64]
    test_ids: NDArray[np.int64]
    train_features: Tensor | None
    test_features: Tensor | None
    train_labels: Tensor | None
    test_labels: Tensor | None


def _node(context: Context) -> tuple[VFLAppConfig, VFLData, PartyRole, _Holdings]:
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, data = _run(str(context.run_config[CONFIG_KEY]))
    role = party_role(context.node_config, cfg.num_feature_parties)
    if role.is_label:
        own = cfg.vfl.label_party_features
        holdings = _Holdings(
            data.train_ids,
            data.test_ids,
            data.train_columns[-1] if own else None,
            data.test_columns[-1] if own else None,
            data.train_labels,
            data.test_labels,
        )
    else:
        k = role.party_id
        holdings = _Holdings(data.train_ids, data.test_ids, data.train_columns[k], data.test_columns[k], None, None)
    return cfg, data, role, holdings


# -- party state in context.state ------------------------------------------------------------------------------------
def _to_bytes(state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _from_bytes(blob: bytes) -> dict[str, Any]:
    return dict(torch.load(io.BytesIO(blob), weights_only=True))


def _rows(tensor: Tensor | None, positions: NDArray[np.int64]) -> Tensor | None:
    return None if tensor is None else tensor[torch.from_numpy(positions)]


def _positions(context: Context, split: str) -> NDArray[np.int64]:
    if ALIGNMENT not in context.state:
        raise RuntimeError("this party has not been set up: train.setup must come first")
    return context.state.array_records[ALIGNMENT][split].numpy().astype(np.int64)


def load_party(context: Context) -> FeatureParty | LabelParty:
    """This node's party on its aligned training rows, restored from ``context.state`` when it was saved there."""
    cfg, data, role, holdings = _node(context)
    positions = _positions(context, "train")
    saved = None
    if PARTY_STATE in context.state:
        saved = _from_bytes(bytes(record_of(context.state, PARTY_STATE)["state"]))
        for name in ("model", "top", "bottom"):
            key = MODEL_PREFIX + name
            if key in context.state:
                saved[name] = context.state.array_records[key].to_torch_state_dict()
    party: FeatureParty | LabelParty
    if role.is_label:
        labels = _rows(holdings.train_labels, positions)
        assert labels is not None
        party = build_label_party(
            cfg.vfl,
            _rows(holdings.train_features, positions),
            labels,
            data.num_classes,
            defence_state=None if saved is None else saved["defence_state"],
        )
    else:
        features = _rows(holdings.train_features, positions)
        assert features is not None
        party = build_feature_party(cfg.vfl, role.party_id, features, data.num_classes)
    if saved is not None:
        party.load_state_dict(saved)
    return party


def _save_party(context: Context, party: FeatureParty | LabelParty) -> None:
    state = party.state_dict()
    for name in ("model", "top", "bottom"):
        weights = state.pop(name, None)
        if weights is not None:
            context.state[MODEL_PREFIX + name] = ArrayRecord(weights)
    context.state[PARTY_STATE] = ConfigRecord({"state": _to_bytes(state)})


# -- message helpers -------------------------------------------------------------------------------------------------
def _tensor_of(array: Array) -> Tensor:
    # Copied: a record's buffer is read-only, and torch wants memory it may write.
    return torch.from_numpy(np.array(array.numpy(), copy=True))


def _tensor(content: RecordDict, key: str) -> Tensor | None:
    array = record_of(content, "arrays").get(key)
    return None if array is None else _tensor_of(array)


def _batches(msg: Message) -> list[int]:
    return [int(b) for b in record_of(msg.content, "config")["batches"]]


def _reply(msg: Message, **records: ArrayRecord | MetricRecord | ConfigRecord) -> Message:
    return Message(RecordDict(dict(records)), reply_to=msg)


def _expect(role: PartyRole, wanted: str, message_type: str) -> None:
    if role.role != wanted:
        raise ValueError(f"{message_type} is for the {wanted} party; this node is the {role.role} party")


def _is_attacker(cfg: VFLAppConfig, role: PartyRole) -> bool:
    return bool(cfg.attacks) and not role.is_label and role.party_id == cfg.vfl.attacker_party


# -- handlers --------------------------------------------------------------------------------------------------------
@app.query("sample_ids")
def sample_ids(msg: Message, context: Context) -> Message:
    """Say which party this node is and which samples it holds, for the server to align."""
    _, _, role, holdings = _node(context)
    return _reply(
        msg,
        config=ConfigRecord({"role": role.role, "party-id": role.party_id}),
        arrays=ArrayRecord({"train-ids": Array(holdings.train_ids), "test-ids": Array(holdings.test_ids)}),
    )


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    """Keep the shared samples (in the server's order) and build a fresh party; the label party sets up its defence."""
    cfg, data, role, holdings = _node(context)
    positions = {}
    for split, own in (("train", holdings.train_ids), ("test", holdings.test_ids)):
        shared = record_of(msg.content, "arrays")[f"{split}-ids"].numpy().astype(np.int64)
        mine = align_samples([own, shared])[0]
        if len(mine) != len(shared):
            raise ValueError(f"this party lacks {len(shared) - len(mine)} of the shared {split} sample ids")
        positions[split] = mine
    for key in [key for key in context.state if key.startswith("vfl-")]:
        del context.state[key]  # a new run on this node starts from scratch
    context.state[ALIGNMENT] = ArrayRecord({split: Array(p) for split, p in positions.items()})
    party = load_party(context)
    _save_party(context, party)
    metrics: dict[str, MetricRecordValues] = {"num-train": len(positions["train"]), "num-test": len(positions["test"])}
    if isinstance(party, LabelParty):
        metrics.update({f"embedding-dim.{k}": dim for k, dim in enumerate(party.embedding_dims)})
    else:
        metrics["embedding-dim"] = embedding_size(cfg.vfl, data.num_classes)
    return _reply(msg, metrics=MetricRecord(metrics))


@app.query("embed")
def embed(msg: Message, context: Context) -> Message:
    """Embeddings ``(B, D)`` of each asked batch, all from the bottom model as it is now."""
    cfg, _, role, _ = _node(context)
    _expect(role, FEATURE, msg.metadata.message_type)
    party = load_party(context)
    assert isinstance(party, FeatureParty)
    out = {}
    for b in _batches(msg):
        ids = _tensor(msg.content, f"ids.{b}")
        if ids is None:
            raise ValueError(f"no sample ids for batch {b}")
        out[f"emb.{b}"] = Array(party.embed(ids).detach().numpy())
    _save_party(context, party)  # the step counter seeds the next forward pass
    if _is_attacker(cfg, role):
        context.state[SENT] = ArrayRecord(dict(out))
    return _reply(msg, arrays=ArrayRecord(out))


@app.train("loss_and_gradients")
def loss_and_gradients(msg: Message, context: Context) -> Message:
    """One training step per batch, in order; the gradient for every feature party, or why a batch was rejected."""
    cfg, _, role, _ = _node(context)
    _expect(role, LABEL, msg.metadata.message_type)
    party = load_party(context)
    assert isinstance(party, LabelParty)
    grads: dict[str, Array] = {}
    losses: dict[str, MetricRecordValues] = {}
    rejected: dict[str, ConfigRecordValues] = {}
    for b in _batches(msg):
        ids = _tensor(msg.content, f"ids.{b}")
        embeddings = [_tensor(msg.content, f"emb.{k}.{b}") for k in range(cfg.num_feature_parties)]
        try:
            if ids is None or any(e is None for e in embeddings):
                raise ValueError("the message lacks the ids or an embedding of this batch")
            loss, party_grads = party.train_step(ids, [e for e in embeddings if e is not None])
        except ValueError as err:  # raised before any update: the batch is skipped, nothing else changes
            log(WARNING, "label party: batch %d rejected: %s", b, err)
            rejected[f"rejected.{b}"] = str(err)
            continue
        losses[f"loss.{b}"] = loss
        for k, gradient in enumerate(party_grads):
            grads[f"grad.{k}.{b}"] = Array(gradient.numpy())
    _save_party(context, party)
    return _reply(msg, arrays=ArrayRecord(grads), metrics=MetricRecord(losses), config=ConfigRecord(rejected))


@app.train("apply_gradients")
def apply_gradients(msg: Message, context: Context) -> Message:
    """Back-propagate each received gradient in order; a malformed one is refused and leaves the model untouched."""
    cfg, _, role, _ = _node(context)
    _expect(role, FEATURE, msg.metadata.message_type)
    party = load_party(context)
    assert isinstance(party, FeatureParty)
    attacker = _is_attacker(cfg, role)
    sent = context.state.array_records[SENT] if attacker and SENT in context.state else None
    observed = context.state.array_records[OBSERVED] if OBSERVED in context.state else ArrayRecord()
    count = len(observed) // 3
    new_observations: dict[str, Array] = {}
    rejected: dict[str, ConfigRecordValues] = {}
    for b in _batches(msg):
        ids, gradient = _tensor(msg.content, f"ids.{b}"), _tensor(msg.content, f"grad.{b}")
        try:
            if ids is None or gradient is None:
                raise ValueError("the message lacks the ids or the gradient of this batch")
            if sent is not None and f"emb.{b}" in sent:
                embedding = sent[f"emb.{b}"].numpy()
                # A malformed gradient carries nothing an attack could use; record only well-formed ones.
                if tuple(gradient.shape) == embedding.shape and bool(torch.isfinite(gradient).all()):
                    new_observations[f"{count:07d}.ids"] = Array(ids.numpy())
                    new_observations[f"{count:07d}.emb"] = Array(np.array(embedding, copy=True))
                    new_observations[f"{count:07d}.grad"] = Array(gradient.numpy())
                    count += 1
            party.apply_gradient(ids, gradient)
        except ValueError as err:
            log(WARNING, "feature party %d: gradient of batch %d refused: %s", role.party_id, b, err)
            rejected[f"rejected.{b}"] = str(err)
    _save_party(context, party)
    if new_observations:
        for key, array in new_observations.items():
            observed[key] = array
        context.state[OBSERVED] = observed
    return _reply(msg, config=ConfigRecord(rejected))


@app.evaluate("embed_test")
def embed_test(msg: Message, context: Context) -> Message:
    """Embeddings ``(N_test, D)`` of the aligned test samples, in the chunks ``fl_kd.vfl.predict_vfl`` uses."""
    _, _, role, holdings = _node(context)
    _expect(role, FEATURE, msg.metadata.message_type)
    party = load_party(context)
    assert isinstance(party, FeatureParty)
    features = _rows(holdings.test_features, _positions(context, "test"))
    assert features is not None
    chunks = [party.infer(features[s : s + PREDICT_BATCH_SIZE]) for s in range(0, len(features), PREDICT_BATCH_SIZE)]
    return _reply(msg, arrays=ArrayRecord({"emb": Array(torch.cat(chunks).numpy())}))


@app.evaluate("predict")
def predict(msg: Message, context: Context) -> Message:
    """Main-task performance on the aligned test samples from the feature parties' test embeddings."""
    cfg, _, role, holdings = _node(context)
    _expect(role, LABEL, msg.metadata.message_type)
    party = load_party(context)
    assert isinstance(party, LabelParty)
    positions = _positions(context, "test")
    own, labels = _rows(holdings.test_features, positions), _rows(holdings.test_labels, positions)
    assert labels is not None
    embeddings = []
    for k in range(cfg.num_feature_parties):
        embedding = _tensor(msg.content, f"emb.{k}")
        if embedding is None:
            raise ValueError(f"no test embedding of feature party {k}")
        embeddings.append(embedding)
    probabilities = torch.cat(
        [
            party.predict(
                [e[s : s + PREDICT_BATCH_SIZE] for e in embeddings],
                None if own is None else own[s : s + PREDICT_BATCH_SIZE],
            )
            for s in range(0, len(labels), PREDICT_BATCH_SIZE)
        ]
    )
    metrics = prediction_metrics(probabilities, labels)
    record: dict[str, MetricRecordValues] = {"accuracy": metrics["accuracy"], "num-samples": metrics["num_samples"]}
    if "auc" in metrics:
        record["auc"] = metrics["auc"]
    return _reply(msg, metrics=MetricRecord(record))


@app.evaluate("train_labels")
def train_labels(msg: Message, context: Context) -> Message:
    """The aligned training labels, for the evaluation harness to score attacks with."""
    _, _, role, holdings = _node(context)
    _expect(role, LABEL, msg.metadata.message_type)
    labels = _rows(holdings.train_labels, _positions(context, "train"))
    assert labels is not None
    return _reply(msg, arrays=ArrayRecord({"labels": Array(labels.numpy())}))


def replay_attacks(context: Context) -> tuple[list[str], list[Any]]:
    """Fresh attacks fed every observation stored on this node, in order, then the trained bottom model."""
    cfg, _, role, _ = _node(context)
    if not _is_attacker(cfg, role):
        raise ValueError(f"feature party {role.party_id} runs no attacks (attacker_party={cfg.vfl.attacker_party})")
    party = load_party(context)
    assert isinstance(party, FeatureParty)
    attacks = cfg.build_attacks()
    observed = context.state.array_records[OBSERVED] if OBSERVED in context.state else ArrayRecord()
    for n in range(len(observed) // 3):
        ids, embedding, gradient = (_tensor_of(observed[f"{n:07d}.{part}"]) for part in ("ids", "emb", "grad"))
        for attack in attacks:
            attack.on_gradient(ids, embedding, gradient)
    for attack in attacks:
        attack.after_training(party.bottom_model, party.features)
    return list(cfg.attacks), attacks


@app.evaluate("attack_results")
def attack_results(msg: Message, context: Context) -> Message:
    """Score this party's attacks against the true training labels the harness sends."""
    names, attacks = replay_attacks(context)
    labels = _tensor(msg.content, "labels")
    if labels is None:
        raise ValueError("attack_results needs the true training labels")
    results = score_attacks(names, attacks, labels)
    return _reply(msg, config=ConfigRecord({"results": json.dumps(results)}))
