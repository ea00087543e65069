"""Vertical (split) federated learning over Flower messages: the server's loop.

Split training as in Liu et al., "Vertical Federated Learning: Concepts, Advances and Challenges" (IEEE TKDE
2024) and the VFLAIR benchmark (Zou et al., ICLR 2024): feature parties send embeddings of a mini-batch, the label
party computes the loss and the gradient for each of them, and each feature party back-propagates its gradient.
The algorithm lives in :mod:`fl_kd.vfl`, the messages in :mod:`fl_kd.vfl.protocol`; this module orders the
exchanges (:mod:`fl_kd.strategies.vfl_exchange` sends them and screens what comes back).

VFL is not round-shaped, so :class:`VFLServer` drives the :class:`~flwr.serverapp.Grid` itself instead of
implementing ``Strategy``: discovery, sample alignment and setup, epochs of mini-batches, evaluation, and attack
scoring for the evaluation harness.

A batch whose embeddings are missing, mis-shaped, not float32, not finite or beyond ``training.max_norm``, or that
the label party rejects, is skipped and logged, and no party updates for it; only a label party that took the
request and answered after the exchange's timeout may have stepped on it (a request not yet taken by then expires).
A gradient that fails the same checks is not forwarded, and a feature party refuses one that does or that is not
for the samples it embedded; either way it keeps its model, while the label party has already stepped on that
batch, as in a real deployment. Both are counted in the results, next to the main-task performance (MP) and each
attack's performance (AP). An evaluation whose test embeddings or prediction are unusable gives NaN MP and its
reason (``evaluation_error``) instead of ending the run.
Attack scoring screens its two replies the same way (the label party's training labels, the attacking party's
results): an attack whose result is unusable is reported as not scored, with the reason, and the run completes.
Every reply refused before a party could use it is counted by reason in ``rejected_replies``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fl_kd.protocol import ProtocolError, array_of, int_of, number_of, scalar_of
from fl_kd.strategies.vfl_exchange import BatchExchange, Messenger, Party, embedding_problem, request
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.attack_results import decode_attack_results, missing_attack
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.node_roles import NODE_ROLES_KEY, describe
from fl_kd.vfl.protocol import PartyRole
from fl_kd.vfl.results import build_results
from fl_kd.vfl.split import align_samples
from fl_kd.vfl.trainer import EpochReport, TrainingHistory, batch_order, evaluation_due

SETUP_TIMEOUT = 3600.0
"""Seconds the setup exchange may take at least: the label party may train CoAE's autoencoder then (minutes for
ten classes on one core)."""


class VFLServer:
    """Drives split training over a Flower ``Grid``: discovery, alignment, training, evaluation, attack scoring.

    Parameters
    ----------
    config : VFLRunConfig
        The run.
    report : EpochReport | None (default: None)
        Receives each epoch's row (loss, skipped batches, seconds, and MP when evaluated).
    node_roles : Mapping[int, PartyRole] | None (default: None)
        Node id -> role, as the deployment registered them (:mod:`fl_kd.vfl.node_roles`); discovery stops at a
        node whose claimed role disagrees. None: each node's claim is taken (a simulation, where no node lies).
    """

    def __init__(
        self,
        config: VFLRunConfig,
        report: EpochReport | None = None,
        node_roles: Mapping[int, PartyRole] | None = None,
    ) -> None:
        self.config = config
        self.report = report
        self.node_roles = node_roles
        self.history = TrainingHistory()
        self.features: list[Party] = []
        self._label: Party | None = None
        self.embedding_dims: list[int] = []
        self.num_train = 0
        self.num_test = 0
        #: The label party's class count (None when it did not say): its training labels must lie below it.
        self.num_classes: int | None = None

    @property
    def label(self) -> Party:
        """The label party (after discovery)."""
        if self._label is None:
            raise RuntimeError("no label party: run discovery first")
        return self._label

    # -- discovery, alignment, setup -------------------------------------------------------------------------------
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        expected = self.config.num_feature_parties + 1
        deadline = time.monotonic() + self.config.training.timeout
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

    def discover(self, messenger: Messenger) -> tuple[list[NDArray[np.int64]], list[NDArray[np.int64]]]:
        """Learn each node's role and its sample ids; returns train and test ids per party (features first)."""
        contents = {node_id: RecordDict() for node_id in self._wait_for_nodes(messenger.grid)}
        replies = messenger.require(vp.SAMPLE_IDS, contents, "discovery")
        found: dict[tuple[str, int], tuple[Party, NDArray[np.int64], NDArray[np.int64]]] = {}
        for node_id, content in sorted(replies.items()):
            role, party_id = scalar_of(content, vp.CONFIG, vp.ROLE), int_of(content, vp.CONFIG, vp.PARTY_ID)
            if role not in (vp.LABEL, vp.FEATURE) or party_id is None:
                raise RuntimeError(f"node {node_id} sent no valid role and party id")
            party = Party(str(role), -1 if role == vp.LABEL else party_id, node_id)
            self._check_registered(node_id, PartyRole(party.role, party.party_id))
            if (party.role, party.party_id) in found:
                raise RuntimeError(f"node {node_id} claims role {party.role} {party.party_id}, which another holds")
            try:
                found[party.role, party.party_id] = (
                    party,
                    vp.ids_of(content, vp.TRAIN_IDS),
                    vp.ids_of(content, vp.TEST_IDS),
                )
            except ProtocolError as err:
                raise RuntimeError(f"node {node_id}: {err}") from None
        expected = [(vp.FEATURE, k) for k in range(self.config.num_feature_parties)] + [(vp.LABEL, -1)]
        if sorted(found) != sorted(expected):
            raise RuntimeError(f"need one label party and feature parties {expected[:-1]}, found {sorted(found)}")
        ordered = [found[key] for key in expected]
        self.features, self._label = [entry[0] for entry in ordered[:-1]], ordered[-1][0]
        num_classes = int_of(replies[self.label.node_id], vp.CONFIG, vp.NUM_CLASSES)
        if num_classes is None or num_classes < 2:
            raise RuntimeError(f"the label party (node {self.label.node_id}) sent no class count of 2 or more")
        self.config.check_num_classes(num_classes)  # before any party is set up (CoAE may train for minutes there)
        self.num_classes = num_classes
        log(INFO, "VFL parties: feature %s, label on node %s", [p.node_id for p in self.features], self.label.node_id)
        return [entry[1] for entry in ordered], [entry[2] for entry in ordered]

    def _check_registered(self, node_id: int, claim: PartyRole) -> None:
        """Stop when the deployment registered ``node_id`` for another role than it claims, or not at all."""
        if self.node_roles is None:
            return
        registered = self.node_roles.get(node_id)
        if registered is None:
            raise RuntimeError(f"node {node_id} is not one the deployment registered ({NODE_ROLES_KEY})")
        if registered != claim:
            raise RuntimeError(
                f"node {node_id} claims {describe(claim)}, but the deployment registered it as {describe(registered)}"
            )

    def setup(
        self, messenger: Messenger, train_ids: Sequence[NDArray[np.int64]], test_ids: Sequence[NDArray[np.int64]]
    ) -> None:
        """Align the parties' samples (:func:`fl_kd.vfl.split.align_samples`) and let every party build itself."""
        shared = {}
        for key, ids in ((vp.TRAIN_IDS, train_ids), (vp.TEST_IDS, test_ids)):
            shared[key] = np.asarray(ids[0])[align_samples(ids)[0]].astype(np.int64)
        self.num_train, self.num_test = len(shared[vp.TRAIN_IDS]), len(shared[vp.TEST_IDS])
        log(INFO, "Aligned %d training and %d test samples", self.num_train, self.num_test)
        parties = [*self.features, self.label]
        timeout = max(self.config.training.timeout, SETUP_TIMEOUT)
        replies = messenger.require(vp.SETUP, {p.node_id: request(shared) for p in parties}, "setup", timeout)
        label_reply = replies[self.label.node_id]
        dims = [int_of(label_reply, vp.METRICS, vp.embedding_dim_key(p.party_id)) for p in self.features]
        for party, dim in zip(self.features, dims, strict=True):
            own = int_of(replies[party.node_id], vp.METRICS, vp.EMBEDDING_DIM)
            if dim is None or own != dim:
                raise RuntimeError(
                    f"feature party {party.party_id} embeds to {own} values, the label party expects {dim}"
                )
        self.embedding_dims = [int(dim) for dim in dims if dim is not None]
        num_classes = int_of(label_reply, vp.METRICS, vp.NUM_CLASSES)
        if num_classes != self.num_classes:
            raise RuntimeError(
                f"the label party set up a task of {num_classes} classes, after {self.num_classes} at discovery"
            )
        for party in parties:
            sizes = tuple(int_of(replies[party.node_id], vp.METRICS, key) for key in (vp.NUM_TRAIN, vp.NUM_TEST))
            if sizes != (self.num_train, self.num_test):
                raise RuntimeError(f"{party.role} party {party.party_id} could not align to the shared samples")

    # -- training ----------------------------------------------------------------------------------------------------
    def train_epoch(self, batches: BatchExchange, epoch: int) -> list[float]:
        """One epoch of seeded mini-batches (:func:`fl_kd.vfl.trainer.batch_order`); returns the batch losses."""
        training = self.config.training
        order = batch_order(self.num_train, training.batch_size, self.config.seed, epoch)
        losses: list[float] = []
        for start in range(0, len(order), training.batches_per_message):
            chunk = {b: order[b] for b in range(start, min(start + training.batches_per_message, len(order)))}
            losses.extend(batches.train(epoch, chunk))
        batches.flush()
        return losses

    # -- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, messenger: Messenger) -> dict[str, Any]:
        """Main-task performance on the aligned test samples, computed by the label party."""
        contents = {p.node_id: RecordDict() for p in self.features}
        replies = messenger.require(vp.EMBED_TEST, contents, "test embedding")
        arrays = {}
        for party, dim in zip(self.features, self.embedding_dims, strict=True):
            embedding, problem = embedding_problem(
                replies[party.node_id], vp.TEST_EMBEDDING, (self.num_test, dim), self.config.training.max_norm
            )
            if embedding is None:
                raise RuntimeError(f"evaluation failed: feature party {party.party_id}: {problem}")
            arrays[vp.evaluation_embedding_key(party.party_id)] = embedding
        reply = messenger.require(vp.PREDICT, {self.label.node_id: request(arrays)}, "evaluation")
        content = reply[self.label.node_id]
        accuracy, num_samples = number_of(content, vp.METRICS, vp.ACCURACY), int_of(content, vp.METRICS, vp.NUM_SAMPLES)
        if accuracy is None or num_samples is None:
            raise RuntimeError("evaluation failed: the label party reported no accuracy")
        if not 0.0 <= accuracy <= 1.0 or num_samples != self.num_test:
            raise RuntimeError(
                f"evaluation failed: the label party reported accuracy {accuracy:g} on {num_samples} samples "
                f"(a share in [0, 1] of the {self.num_test} aligned test samples expected)"
            )
        out: dict[str, Any] = {"accuracy": accuracy, "num_samples": num_samples}
        auc = scalar_of(content, vp.METRICS, vp.AUC)
        if isinstance(auc, float):
            if not (math.isnan(auc) or 0.0 <= auc <= 1.0):  # NaN when the test labels hold one class, as in-process
                raise RuntimeError(f"evaluation failed: the label party reported an AUC of {auc:g}, outside [0, 1]")
            out["auc"] = auc
        return out

    def _evaluate_or_nan(self, messenger: Messenger) -> dict[str, Any]:
        """:meth:`evaluate`, or NaN MP and the reason when a party's reply is unusable: the run keeps its results."""
        try:
            return self.evaluate(messenger)
        except RuntimeError as err:
            log(WARNING, "%s", err)
            return {"accuracy": float("nan"), "num_samples": 0, "evaluation_error": str(err)}

    def attack_results(self, messenger: Messenger) -> dict[str, Any]:
        """Each configured attack's result, scored by the attacking party against the true training labels.

        The harness reads the labels from the label party and passes them to the attacking party. Both replies are
        screened like every other (identity, array bytes, dtype, shape and class range; the results' figures): an
        unusable one is logged and counted in ``Messenger.rejected``, and the attacks it concerns are reported as
        not scored, with the reason (:func:`fl_kd.vfl.attack_results.missing_attack`), instead of ending the run.
        """
        names = list(self.config.attack)
        try:
            labels = self._training_labels(messenger)
            attacker = self.features[self.config.attacker_party]
            content = request({vp.LABELS: labels})
            outcome = messenger.exchange(vp.ATTACK_RESULTS, {attacker.node_id: content})[attacker.node_id]
            if outcome.content is None:
                raise ProtocolError(f"the attacking party: {outcome.problem}")
            try:
                results, refused = decode_attack_results(outcome.content, names, self.num_train)
            except ProtocolError as err:
                messenger.rejected["unusable attack results"] += 1
                raise ProtocolError(f"the attacking party: {err}") from None
        except ProtocolError as err:
            log(WARNING, "attack scoring failed, no attack is scored: %s", err)
            return {name: missing_attack(name, str(err)) for name in names}
        for reason in refused:
            log(WARNING, "attack scoring: %s", reason)
            messenger.rejected["unusable attack result"] += 1
        return results

    def _training_labels(self, messenger: Messenger) -> NDArray[np.int64]:
        """The label party's aligned training labels ``(N,)``; ``ProtocolError`` saying why they are unusable."""
        outcome = messenger.exchange(vp.TRAIN_LABELS, {self.label.node_id: RecordDict()})[self.label.node_id]
        if outcome.content is None:
            raise ProtocolError(f"the label party: {outcome.problem}")
        labels = None
        try:
            labels = array_of(outcome.content, vp.ARRAYS, vp.LABELS)
            problem = "sent none" if labels is None else vp.labels_problem(labels, self.num_train, self.num_classes)
        except ProtocolError as err:
            problem = f"they do not decode: {err}"
        if problem is not None or labels is None:
            messenger.rejected["unusable training labels"] += 1
            raise ProtocolError(f"the label party's training labels: {problem}")
        return labels

    # -- the whole run ---------------------------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict[str, Any]:
        """Discover, align, train, evaluate and score attacks; returns :func:`fl_kd.vfl.results.build_results`."""
        start = time.perf_counter()
        messenger = Messenger(grid, self.config.training.timeout)
        train_ids, test_ids = self.discover(messenger)
        self.setup(messenger, train_ids, test_ids)
        batches = BatchExchange(
            messenger, self.features, self.label, self.embedding_dims, self.history, self.config.training.max_norm
        )
        training = self.config.training
        for epoch in range(training.epochs):
            epoch_start = time.perf_counter()
            losses = self.train_epoch(batches, epoch)
            mp = None
            if evaluation_due(epoch, training.evaluate_every, training.epochs):
                mp = self._evaluate_or_nan(messenger)["accuracy"]
            row = self.history.end_epoch(epoch, losses, time.perf_counter() - epoch_start, mp)
            if self.report is not None:
                self.report(row)
        metrics = self._evaluate_or_nan(messenger)
        attacks = self.attack_results(messenger) if self.config.attack else {}
        return build_results(
            self.config,
            self.history,
            metrics,
            attacks,
            num_train=self.num_train,
            seconds=time.perf_counter() - start,
            exchanges=messenger.exchanges,
            rejected_replies=messenger.rejected,
        )
