"""Vertical (split) federated learning over Flower messages: the run config, the protocol and the server's loop.

Split training as in Liu et al., "Vertical Federated Learning: Concepts, Advances and Challenges" (IEEE TKDE
2024) and the VFLAIR benchmark (Zou et al., ICLR 2024): feature parties send embeddings of a mini-batch, the label
party computes the loss and the gradient for each of them, and each feature party back-propagates its gradient.
The algorithm lives in :mod:`fl_kd.vfl`; this module only orders the messages and screens what comes back.

VFL is not round-shaped, so :class:`VFLServer` drives the :class:`~flwr.serverapp.Grid` itself instead of
implementing ``Strategy``. Messages (server to party; ``<b>`` is a batch's index in its epoch, ``<k>`` a feature
party):

=============================  ==================  ===============================  ================================
message type                   sent to             carries                          reply
=============================  ==================  ===============================  ================================
``query.sample_ids``           every node          -                                role, party-id; own sample ids
``train.setup``                every node          the shared (aligned) sample ids  sizes; embedding sizes
``query.embed``                feature parties     ``ids.<b>``                      ``emb.<b>``
``train.loss_and_gradients``   label party         ``ids.<b>``, ``emb.<k>.<b>``     ``loss.<b>``, ``grad.<k>.<b>``
``train.apply_gradients``      each feature party  ``ids.<b>``, its ``grad.<b>``    ``rejected.<b>`` if refused
``evaluate.embed_test``        feature parties     -                                ``emb`` of the test samples
``evaluate.predict``           label party         ``emb.<k>``                      MP: accuracy (and AUC)
``evaluate.train_labels``      label party         -                                aligned training labels
``evaluate.attack_results``    attacking party     training labels                  attack results (JSON)
=============================  ==================  ===============================  ================================

The last two exist only for the evaluation harness: scoring a label-inference attack needs the true labels.

A batch whose embeddings are missing, mis-shaped or not finite, or that the label party rejects, is skipped and
logged, and no party updates for it. A feature party that refuses its gradient (mis-shaped or not finite) keeps
its model; the label party has already stepped on that batch, as in a real deployment. Both are counted in the
results, next to the main-task performance (MP) and each attack's performance (AP).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.vfl.attacks import build_attack
from fl_kd.vfl.experiment import VFLConfig, num_feature_parties
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.split import align_samples
from fl_kd.vfl.trainer import batch_order

CONFIG_KEY = "fl-kd-vfl-config"
OUTPUT_KEY = "output-dir"
RESULTS_FILE = "results.json"

SAMPLE_IDS = "query.sample_ids"
SETUP = "train.setup"
EMBED = "query.embed"
LOSS_AND_GRADIENTS = "train.loss_and_gradients"
APPLY_GRADIENTS = "train.apply_gradients"
EMBED_TEST = "evaluate.embed_test"
PREDICT = "evaluate.predict"
TRAIN_LABELS = "evaluate.train_labels"
ATTACK_RESULTS = "evaluate.attack_results"

LABEL = "label"
FEATURE = "feature"

SETUP_TIMEOUT = 3600.0
"""Seconds the setup exchange may take at least: the label party may train CoAE's autoencoder then (minutes for
ten classes on one core)."""


@dataclass
class VFLAppConfig:
    """One VFL run as the Flower apps see it: the core config plus what only the message layer needs.

    It travels as JSON in the run config (Flower run-config values are scalars), so the ServerApp and every
    ClientApp build their part from the same description.

    Attributes
    ----------
    vfl : VFLConfig
        Dataset, split, models, defence and training settings (see :class:`fl_kd.vfl.experiment.VFLConfig`).
    attacks : dict[str, dict[str, Any]]
        Attack name -> constructor parameters, run by feature party ``vfl.attacker_party``; insertion order is
        the order of the results.
    evaluate_every : int (default: 0)
        Also evaluate MP every this many epochs (0: only after training).
    timeout : float (default: 600.0)
        Seconds to wait for the replies of one exchange; a party that has not answered by then counts as missing.
    """

    vfl: VFLConfig = field(default_factory=VFLConfig)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate_every: int = 0
    timeout: float = 600.0

    @property
    def num_feature_parties(self) -> int:
        """Passive parties in the run (the federation has one more node: the label party)."""
        return num_feature_parties(self.vfl)

    def build_attacks(self) -> list[FeaturePartyAttack]:
        """Fresh attack objects, in config order."""
        return [build_attack(name, **params) for name, params in self.attacks.items()]

    def to_json(self) -> str:
        """Serialise for the run config."""
        return json.dumps(
            {
                "vfl": asdict(self.vfl),
                "attacks": self.attacks,
                "evaluate_every": self.evaluate_every,
                "timeout": self.timeout,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> VFLAppConfig:
        """Inverse of :meth:`to_json`; unknown keys raise ``ValueError``."""
        raw = json.loads(text)
        unknown = sorted(set(raw) - {"vfl", "attacks", "evaluate_every", "timeout"})
        if unknown:
            raise ValueError(f"unknown keys {unknown} in the VFL app config")
        return cls(
            vfl=VFLConfig.from_mapping(raw.get("vfl", {})),
            attacks={str(name): dict(params) for name, params in raw.get("attacks", {}).items()},
            evaluate_every=int(raw.get("evaluate_every", 0)),
            timeout=float(raw.get("timeout", 600.0)),
        )


def score_attacks(names: Sequence[str], attacks: Sequence[FeaturePartyAttack], labels: Tensor) -> dict[str, Any]:
    """Each attack's result against the true training labels ``(N,)``.

    An attack that does not apply to the run (e.g. a binary-only scoring attack on ten classes) reports its
    reason under ``error`` instead of stopping the others.
    """
    results: dict[str, Any] = {}
    for name, attack in zip(names, attacks, strict=True):
        try:
            results[name] = attack.result(labels)
        except ValueError as err:
            results[name] = {"attack": name, "error": str(err)}
    return results


@dataclass
class _Outcome:
    """One node's answer to one exchange: its content, or why there is none."""

    content: RecordDict | None
    problem: str | None = None


@dataclass
class _Party:
    role: str
    party_id: int
    node_id: int


class VFLServer:
    """Drives split training over a Flower ``Grid``: discovery, alignment, training, evaluation, attack scoring.

    Parameters
    ----------
    config : VFLAppConfig
        The run.
    on_epoch_end : Callable[[dict], None], optional
        Receives each epoch's summary (loss, skipped batches, seconds, and MP when evaluated).
    """

    def __init__(self, config: VFLAppConfig, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.on_epoch_end = on_epoch_end
        self.skipped: list[dict[str, Any]] = []
        self.failed_updates: list[dict[str, Any]] = []
        self.exchanges = 0
        self._features: list[_Party] = []
        self._label: _Party | None = None
        self._embedding_dims: list[int] = []
        self.num_train = 0
        self.num_test = 0

    # -- message plumbing ----------------------------------------------------------------------------------------
    def _exchange(
        self, grid: Grid, message_type: str, contents: Mapping[int, RecordDict], timeout: float | None = None
    ) -> dict[int, _Outcome]:
        """Send one message per node and collect what each node answered (or why it did not)."""
        self.exchanges += 1
        messages = [
            Message(content, dst_node_id=node_id, message_type=message_type) for node_id, content in contents.items()
        ]
        outcomes: dict[int, _Outcome] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout or self.config.timeout):
            node_id = reply.metadata.src_node_id
            if node_id not in contents:
                log(WARNING, "%s: ignored a reply from node %s, which was not asked", message_type, node_id)
            elif node_id in outcomes:
                log(WARNING, "%s: ignored a second reply from node %s", message_type, node_id)
            elif reply.has_error():
                outcomes[node_id] = _Outcome(None, f"error reply ({reply.error.reason})")
            else:
                outcomes[node_id] = _Outcome(reply.content)
        for node_id in contents:
            outcomes.setdefault(node_id, _Outcome(None, "no reply"))
        return outcomes

    def _require(self, outcomes: Mapping[int, _Outcome], what: str) -> dict[int, RecordDict]:
        """Contents of every node, or ``RuntimeError`` naming the nodes that failed a step the run cannot skip."""
        problems = {node: outcome.problem for node, outcome in outcomes.items() if outcome.content is None}
        if problems:
            raise RuntimeError(f"{what} failed: " + "; ".join(f"node {n}: {p}" for n, p in sorted(problems.items())))
        return {node: outcome.content for node, outcome in outcomes.items() if outcome.content is not None}

    @property
    def label(self) -> _Party:
        """The label party (after discovery)."""
        if self._label is None:
            raise RuntimeError("no label party: run discovery first")
        return self._label

    # -- discovery, alignment, setup -------------------------------------------------------------------------------
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        expected = self.config.num_feature_parties + 1
        deadline = time.monotonic() + self.config.timeout
        node_ids = sorted(grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(1.0)  # deployment: SuperNodes may still be connecting
            node_ids = sorted(grid.get_node_ids())
        if len(node_ids) != expected:
            raise RuntimeError(
                f"the run needs {expected} nodes ({self.config.num_feature_parties} feature parties and one label "
                f"party), the federation has {len(node_ids)}"
            )
        return node_ids

    def discover(self, grid: Grid) -> tuple[list[NDArray[np.int64]], list[NDArray[np.int64]]]:
        """Learn each node's role and its sample ids; returns train and test ids per party (features first)."""
        contents = {node_id: RecordDict() for node_id in self._wait_for_nodes(grid)}
        replies = self._require(self._exchange(grid, SAMPLE_IDS, contents), "discovery")
        features: dict[int, tuple[_Party, NDArray[np.int64], NDArray[np.int64]]] = {}
        label: tuple[_Party, NDArray[np.int64], NDArray[np.int64]] | None = None
        for node_id, content in sorted(replies.items()):
            config = record_of(content, "config")
            party = _Party(str(config["role"]), int(config["party-id"]), node_id)
            ids = (_int_array(content, "train-ids"), _int_array(content, "test-ids"))
            if party.role == LABEL and label is None:
                label = (party, *ids)
            elif party.role == FEATURE and party.party_id not in features:
                features[party.party_id] = (party, *ids)
            else:
                raise RuntimeError(f"node {node_id} claims role {party.role} {party.party_id}, which another holds")
        expected = list(range(self.config.num_feature_parties))
        if label is None or sorted(features) != expected:
            raise RuntimeError(f"need one label party and feature parties {expected}, found {sorted(features)}")
        ordered = [features[k] for k in expected] + [label]
        self._features = [entry[0] for entry in ordered[:-1]]
        self._label = label[0]
        log(INFO, "VFL parties: feature %s, label on node %s", [p.node_id for p in self._features], self.label.node_id)
        return [entry[1] for entry in ordered], [entry[2] for entry in ordered]

    def setup(self, grid: Grid, train_ids: Sequence[NDArray[np.int64]], test_ids: Sequence[NDArray[np.int64]]) -> None:
        """Align the parties' samples (:func:`fl_kd.vfl.split.align_samples`) and let every party build itself."""
        shared = {}
        for split, ids in (("train", train_ids), ("test", test_ids)):
            positions = align_samples(ids)
            shared[split] = np.asarray(ids[0])[positions[0]].astype(np.int64)
        self.num_train, self.num_test = len(shared["train"]), len(shared["test"])
        log(INFO, "Aligned %d training and %d test samples", self.num_train, self.num_test)
        parties = [*self._features, self.label]
        contents = {
            p.node_id: RecordDict({"arrays": ArrayRecord({f"{split}-ids": Array(i) for split, i in shared.items()})})
            for p in parties
        }
        timeout = max(self.config.timeout, SETUP_TIMEOUT)
        replies = self._require(self._exchange(grid, SETUP, contents, timeout), "setup")
        label_metrics = record_of(replies[self.label.node_id], "metrics")
        self._embedding_dims = [int(label_metrics[f"embedding-dim.{p.party_id}"]) for p in self._features]
        for party, dim in zip(self._features, self._embedding_dims, strict=True):
            own = int(record_of(replies[party.node_id], "metrics")["embedding-dim"])
            if own != dim:
                raise RuntimeError(
                    f"feature party {party.party_id} embeds to {own} values, the label party expects {dim}"
                )
        for party in parties:
            metrics = record_of(replies[party.node_id], "metrics")
            if (int(metrics["num-train"]), int(metrics["num-test"])) != (self.num_train, self.num_test):
                raise RuntimeError(f"{party.role} party {party.party_id} could not align to the shared samples")

    # -- training ----------------------------------------------------------------------------------------------------
    def _skip(self, epoch: int, batch: int, reason: str) -> None:
        log(WARNING, "epoch %d batch %d skipped: %s", epoch, batch, reason)
        self.skipped.append({"epoch": epoch, "batch": batch, "reason": reason})

    def _fail_update(self, epoch: int, batch: int, party: int, reason: str) -> None:
        log(WARNING, "epoch %d batch %d: feature party %d did not apply its gradient: %s", epoch, batch, party, reason)
        self.failed_updates.append({"epoch": epoch, "batch": batch, "party": party, "reason": reason})

    def train_chunk(self, grid: Grid, epoch: int, chunk: Mapping[int, Tensor]) -> list[float]:
        """Train on the batches ``{index: ids (B,)}`` of one round of messages; returns their losses in order."""
        ids = {b: chunk[b].numpy().astype(np.int64) for b in sorted(chunk)}
        embeddings = self._embed(grid, epoch, ids)
        if not embeddings:
            return []
        losses, reply = self._step(grid, epoch, ids, embeddings)
        if losses:
            self._apply(grid, epoch, ids, list(losses), reply)
        return list(losses.values())

    def _embed(self, grid: Grid, epoch: int, ids: Mapping[int, NDArray[np.int64]]) -> dict[int, list[NDArray[Any]]]:
        """Every feature party's embedding of each batch; batches with a missing or unusable one are skipped."""

        def request() -> RecordDict:
            return RecordDict(
                {
                    "arrays": ArrayRecord({f"ids.{b}": Array(batch) for b, batch in ids.items()}),
                    "config": ConfigRecord({"epoch": epoch, "batches": list(ids)}),
                }
            )

        replies = self._exchange(grid, EMBED, {p.node_id: request() for p in self._features})
        accepted: dict[int, list[NDArray[Any]]] = {}
        for b, batch in ids.items():
            embeddings, problem = [], None
            for party, dim in zip(self._features, self._embedding_dims, strict=True):
                outcome = replies[party.node_id]
                array = None if outcome.content is None else _array(outcome.content, f"emb.{b}")
                problem = outcome.problem or _embedding_problem(array, (len(batch), dim))
                if problem is not None or array is None:
                    self._skip(epoch, b, f"feature party {party.party_id}: {problem}")
                    break
                embeddings.append(array)
            else:
                accepted[b] = embeddings
        return accepted

    def _step(
        self,
        grid: Grid,
        epoch: int,
        ids: Mapping[int, NDArray[np.int64]],
        embeddings: Mapping[int, Sequence[NDArray[Any]]],
    ) -> tuple[dict[int, float], RecordDict]:
        """The label party's training steps; returns the loss of each batch it stepped on, and its reply."""
        arrays = {}
        for b, per_party in embeddings.items():
            arrays[f"ids.{b}"] = Array(ids[b])
            for party, embedding in zip(self._features, per_party, strict=True):
                arrays[f"emb.{party.party_id}.{b}"] = Array(embedding)
        request = RecordDict(
            {"arrays": ArrayRecord(arrays), "config": ConfigRecord({"epoch": epoch, "batches": list(embeddings)})}
        )
        outcome = self._exchange(grid, LOSS_AND_GRADIENTS, {self.label.node_id: request})[self.label.node_id]
        if outcome.content is None:
            for b in embeddings:
                self._skip(epoch, b, f"label party: {outcome.problem}")
            return {}, RecordDict()
        losses = {}
        for b in embeddings:
            reason = _config_value(outcome.content, f"rejected.{b}")
            loss = _metric_value(outcome.content, f"loss.{b}")
            if reason is not None or loss is None:
                self._skip(epoch, b, f"label party rejected the embeddings: {reason or 'no loss reported'}")
            else:
                losses[b] = float(loss)
        return losses, outcome.content

    def _apply(
        self, grid: Grid, epoch: int, ids: Mapping[int, NDArray[np.int64]], stepped: list[int], reply: RecordDict
    ) -> None:
        """Send each feature party its gradients of the stepped batches; record every one it refuses."""
        requests = {}
        for party in self._features:
            arrays = {}
            for b in stepped:
                arrays[f"ids.{b}"] = Array(ids[b])
                gradient = _array(reply, f"grad.{party.party_id}.{b}")
                if gradient is not None:  # a missing gradient is the feature party's to refuse, and to report
                    arrays[f"grad.{b}"] = Array(gradient)
            requests[party.node_id] = RecordDict(
                {"arrays": ArrayRecord(arrays), "config": ConfigRecord({"epoch": epoch, "batches": stepped})}
            )
        replies = self._exchange(grid, APPLY_GRADIENTS, requests)
        for party in self._features:
            outcome = replies[party.node_id]
            for b in stepped:
                reason = outcome.problem if outcome.content is None else _config_value(outcome.content, f"rejected.{b}")
                if reason is not None:
                    self._fail_update(epoch, b, party.party_id, str(reason))

    def train_epoch(self, grid: Grid, epoch: int) -> float:
        """One epoch of seeded mini-batches (:func:`fl_kd.vfl.trainer.batch_order`); returns the mean loss."""
        vfl = self.config.vfl
        batches = batch_order(self.num_train, vfl.batch_size, vfl.seed, epoch)
        losses: list[float] = []
        for start in range(0, len(batches), vfl.batches_per_message):
            chunk = {b: batches[b] for b in range(start, min(start + vfl.batches_per_message, len(batches)))}
            losses.extend(self.train_chunk(grid, epoch, chunk))
        return float(np.mean(losses)) if losses else float("nan")

    # -- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, grid: Grid) -> dict[str, Any]:
        """Main-task performance on the aligned test samples, computed by the label party."""
        replies = self._require(
            self._exchange(grid, EMBED_TEST, {p.node_id: RecordDict() for p in self._features}), "test embedding"
        )
        arrays = {}
        for party, dim in zip(self._features, self._embedding_dims, strict=True):
            embedding = _array(replies[party.node_id], "emb")
            problem = _embedding_problem(embedding, (self.num_test, dim))
            if problem is not None or embedding is None:
                raise RuntimeError(f"evaluation failed: feature party {party.party_id}: {problem}")
            arrays[f"emb.{party.party_id}"] = Array(embedding)
        content = RecordDict({"arrays": ArrayRecord(arrays)})
        reply = self._require(self._exchange(grid, PREDICT, {self.label.node_id: content}), "evaluation")
        metrics = record_of(reply[self.label.node_id], "metrics")
        out: dict[str, Any] = {"accuracy": float(metrics["accuracy"]), "num_samples": int(metrics["num-samples"])}
        if "auc" in metrics:
            out["auc"] = float(metrics["auc"])
        return out

    def attack_results(self, grid: Grid) -> dict[str, Any]:
        """Ask the attacking party to score its attacks; the harness passes it the true training labels."""
        labels_reply = self._require(
            self._exchange(grid, TRAIN_LABELS, {self.label.node_id: RecordDict()}), "reading the training labels"
        )
        labels = _array(labels_reply[self.label.node_id], "labels")
        if labels is None:
            raise RuntimeError("the label party sent no training labels to score the attacks with")
        attacker = self._features[self.config.vfl.attacker_party]
        content = RecordDict({"arrays": ArrayRecord({"labels": Array(labels)})})
        reply = self._require(self._exchange(grid, ATTACK_RESULTS, {attacker.node_id: content}), "attack scoring")
        return dict(json.loads(str(record_of(reply[attacker.node_id], "config")["results"])))

    # -- the whole run ---------------------------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict[str, Any]:
        """Discover, align, train, evaluate and score attacks; returns the results (see ``fl_kd.vfl.run_vfl``)."""
        start = time.perf_counter()
        train_ids, test_ids = self.discover(grid)
        self.setup(grid, train_ids, test_ids)
        vfl = self.config.vfl
        losses, epoch_seconds, evaluations = [], [], []
        for epoch in range(vfl.epochs):
            epoch_start = time.perf_counter()
            losses.append(self.train_epoch(grid, epoch))
            epoch_seconds.append(time.perf_counter() - epoch_start)
            row: dict[str, Any] = {
                "epoch": epoch,
                "loss": losses[-1],
                "skipped_batches": sum(1 for s in self.skipped if s["epoch"] == epoch),
                "seconds": epoch_seconds[-1],
            }
            every = self.config.evaluate_every
            if every > 0 and (epoch + 1) % every == 0 and epoch + 1 < vfl.epochs:
                row["mp"] = self.evaluate(grid)["accuracy"]
                evaluations.append(row)
            log(INFO, "epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
        metrics = self.evaluate(grid)
        attacks = self.attack_results(grid) if self.config.attacks else {}
        return {
            "mp": metrics["accuracy"],
            **metrics,
            "train_loss": losses,
            "skipped_batches": len(self.skipped),
            "failed_updates": len(self.failed_updates),
            "skipped": list(self.skipped),
            "failed": list(self.failed_updates),
            "attacks": attacks,
            "num_train": self.num_train,
            "epoch_seconds": epoch_seconds,
            "evaluations": evaluations,
            "exchanges": self.exchanges,
            "seconds": time.perf_counter() - start,
            "config": asdict(vfl),
        }


# -- record helpers -------------------------------------------------------------------------------------------------
def record_of(content: RecordDict, name: str) -> Mapping[str, Any]:
    """The record ``name`` of a message's content as a plain mapping (empty when absent).

    Replies come from other parties, so every value is checked where it is used rather than trusted by type.
    """
    if name not in content:
        return {}
    return cast(Mapping[str, Any], content[name])


def _array(content: RecordDict, key: str) -> NDArray[Any] | None:
    """``key`` from the content's ``arrays`` record, or ``None`` when it is absent."""
    array = record_of(content, "arrays").get(key)
    return None if array is None else array.numpy()


def _int_array(content: RecordDict, key: str) -> NDArray[np.int64]:
    array = _array(content, key)
    if array is None or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise RuntimeError(f"a party reported no valid {key}")
    return array.astype(np.int64)


def _config_value(content: RecordDict, key: str) -> Any:
    return record_of(content, "config").get(key)


def _metric_value(content: RecordDict, key: str) -> Any:
    return record_of(content, "metrics").get(key)


def _embedding_problem(array: NDArray[Any] | None, shape: tuple[int, int]) -> str | None:
    """Why an embedding cannot be used, or ``None`` when it is a finite float32 array of ``shape``."""
    if array is None:
        return "sent no embedding"
    if array.dtype != np.float32:
        return f"embedding has dtype {array.dtype}, expected float32"
    if array.shape != shape:
        return f"embedding has shape {array.shape}, expected {shape}"
    if not np.isfinite(array).all():
        return "embedding contains NaN or inf"
    return None
