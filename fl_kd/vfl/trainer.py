"""In-process split-training loop and evaluation for vertical FL.

One mini-batch is three protocol messages — feature parties embed, the label party takes a training step,
feature parties apply the returned gradients — with the attack hook of ``fl_kd.vfl.hooks.FeaturePartyAttack``
in between, so an attacker sees exactly what its party receives. The loop is the reference against which a
Flower deployment of the same steps can be checked.

Several mini-batches may share one round of messages (``batches_per_message``), which cuts the number of
round trips when each costs more than the computation: the feature parties then embed all of a message's
batches with the bottom models they hold at its start, and apply the returned gradients one after the other.
Using embeddings that are a few local steps stale is the trade FedBCD makes (Liu et al., "FedBCD: A
Communication-Efficient Collaborative Learning Framework for Distributed Features", IEEE TSP 2022).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.parties import FeatureParty, LabelParty

logger = logging.getLogger(__name__)

PREDICT_BATCH_SIZE = 1024
"""Samples per inference pass; a party that predicts on its own must use the same chunks to get the same floats."""


@dataclass
class TrainingHistory:
    """What happened during ``train_vfl``.

    Attributes
    ----------
    epoch_losses : list[float]
        Mean training loss of the batches completed in each epoch (NaN for an epoch with none).
    skipped_batches : list[tuple[int, int]]
        ``(epoch, batch)`` of every batch skipped because a party failed or sent malformed data.
    failed_updates : list[tuple[int, int, int]]
        ``(epoch, batch, party_id)`` of every gradient a feature party refused or failed to apply; the label
        party had already stepped on that batch.
    num_batches : int
        Number of batches attempted.
    """

    epoch_losses: list[float] = field(default_factory=list)
    skipped_batches: list[tuple[int, int]] = field(default_factory=list)
    failed_updates: list[tuple[int, int, int]] = field(default_factory=list)
    num_batches: int = 0


def batch_order(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """Seeded shuffled mini-batches of sample ids for one epoch (the last batch may be smaller).

    Each epoch has its own stream keyed by ``(seed, epoch)``, so any epoch can be replayed on its own, e.g. by
    a Flower ServerApp that resumes mid-run.
    """
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    order = torch.from_numpy(rng.permutation(num_samples).astype(np.int64))
    return list(torch.split(order, batch_size))


def train_vfl(
    feature_parties: Sequence[FeatureParty],
    label_party: LabelParty,
    num_samples: int,
    epochs: int,
    batch_size: int,
    seed: int,
    attacks: Sequence[FeaturePartyAttack] = (),
    attacker_party: int = 0,
    batches_per_message: int = 1,
) -> TrainingHistory:
    """Train all parties for ``epochs`` over ``num_samples`` aligned samples.

    Parameters
    ----------
    feature_parties : Sequence[FeatureParty]
        The passive parties, in the order the label party expects their embeddings.
    label_party : LabelParty
        The active party (labels, top model, defence).
    num_samples : int
        Number of aligned training samples; ids are ``0 .. num_samples - 1``.
    epochs, batch_size, seed : int
        Training length, mini-batch size and shuffling seed.
    attacks : Sequence[FeaturePartyAttack] (default: ())
        Attacks run by feature party ``attacker_party``; each sees the ids, that party's embedding and the
        gradient it received, then its trained bottom model after training.
    attacker_party : int (default: 0)
        Index of the attacking feature party.
    batches_per_message : int (default: 1)
        Mini-batches exchanged per round of messages (see the module docstring); 1 is plain split training.

    Returns
    -------
    TrainingHistory
        Losses per epoch, the batches that were skipped and the updates that failed.

    Notes
    -----
    Every feature party is asked to embed every batch. A batch in which any of them fails, or whose embeddings
    the label party rejects, is skipped and logged: no model is updated for it. A feature party failing to
    apply its gradient is logged and recorded in ``failed_updates``, but the label party and the other feature
    parties have then already stepped, as they would have in a real deployment.
    """
    if not feature_parties:
        raise ValueError("train_vfl needs at least one feature party")
    if not 0 <= attacker_party < len(feature_parties):
        raise ValueError(f"attacker_party must index one of {len(feature_parties)} feature parties")
    if batches_per_message < 1:
        raise ValueError(f"batches_per_message must be at least 1, got {batches_per_message}")
    for party in feature_parties:
        if party.num_samples != num_samples:
            raise ValueError(f"feature party {party.party_id} holds {party.num_samples} samples, not {num_samples}")
    if label_party.num_samples != num_samples:
        raise ValueError(f"the label party holds {label_party.num_samples} samples, not {num_samples}")

    history = TrainingHistory()
    for epoch in range(epochs):
        losses: list[float] = []
        batches = list(enumerate(batch_order(num_samples, batch_size, seed, epoch)))
        for start in range(0, len(batches), batches_per_message):
            chunk = batches[start : start + batches_per_message]
            history.num_batches += len(chunk)
            embedded = []
            for batch, ids in chunk:
                embeddings = _embed_all(feature_parties, ids, epoch, batch)
                if embeddings is None:
                    history.skipped_batches.append((epoch, batch))
                else:
                    embedded.append((batch, ids, embeddings))
            stepped = []
            for batch, ids, embeddings in embedded:
                try:
                    loss, grads = label_party.train_step(ids, embeddings)
                except ValueError:
                    message = "epoch %d batch %d skipped: the label party rejected the embeddings"
                    logger.warning(message, epoch, batch, exc_info=True)
                    history.skipped_batches.append((epoch, batch))
                    continue
                for attack in attacks:
                    attack.on_gradient(ids, embeddings[attacker_party].detach(), grads[attacker_party])
                losses.append(loss)
                stepped.append((batch, ids, grads))
            for index, party in enumerate(feature_parties):
                for batch, ids, grads in stepped:
                    try:
                        party.apply_gradient(ids, grads[index])
                    except Exception:
                        message = "epoch %d batch %d: feature party %d failed to apply its gradient"
                        logger.warning(message, epoch, batch, party.party_id, exc_info=True)
                        history.failed_updates.append((epoch, batch, party.party_id))
        history.epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        logger.info("epoch %d: loss %.4f", epoch, history.epoch_losses[-1])

    attacker = feature_parties[attacker_party]
    for attack in attacks:
        attack.after_training(attacker.bottom_model, attacker.features)
    return history


def _embed_all(feature_parties: Sequence[FeatureParty], ids: Tensor, epoch: int, batch: int) -> list[Tensor] | None:
    """Every party's embedding of ``ids``, or ``None`` (logged) if any party failed.

    All parties are asked even after one fails, as they would be by one broadcast message, so their step
    counters do not depend on which party failed.
    """
    embeddings, failed = [], False
    for party in feature_parties:
        try:
            embeddings.append(party.embed(ids))
        except Exception:
            message = "epoch %d batch %d skipped: feature party %d failed to embed"
            logger.warning(message, epoch, batch, party.party_id, exc_info=True)
            failed = True
    return None if failed else embeddings


def predict_vfl(
    feature_parties: Sequence[FeatureParty],
    label_party: LabelParty,
    party_features: Sequence[Tensor],
    label_features: Tensor | None = None,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> Tensor:
    """Class probabilities ``(N, C)`` for new samples given each feature party's features ``(N, F_k)``."""
    if len(party_features) != len(feature_parties):
        raise ValueError(f"expected features for {len(feature_parties)} feature parties, got {len(party_features)}")
    num = int(party_features[0].shape[0])
    outputs = []
    for start in range(0, num, batch_size):
        stop = start + batch_size
        embeddings = [party.infer(x[start:stop]) for party, x in zip(feature_parties, party_features, strict=True)]
        own = None if label_features is None else label_features[start:stop]
        outputs.append(label_party.predict(embeddings, own))
    return torch.cat(outputs, dim=0)


def evaluate_vfl(
    feature_parties: Sequence[FeatureParty],
    label_party: LabelParty,
    party_features: Sequence[Tensor],
    labels: Tensor,
    label_features: Tensor | None = None,
    batch_size: int = PREDICT_BATCH_SIZE,
) -> dict[str, Any]:
    """Main-task metrics on held-out samples.

    Returns
    -------
    dict[str, Any]
        ``accuracy`` (VFLAIR's main-task performance, MP), ``num_samples`` and, for two classes, ``auc``
        (ROC-AUC of the decoded positive-class probability; NaN when the labels hold a single class).
    """
    probabilities = predict_vfl(feature_parties, label_party, party_features, label_features, batch_size)
    return prediction_metrics(probabilities, labels)


def prediction_metrics(probabilities: Tensor, labels: Tensor) -> dict[str, Any]:
    """``accuracy``, ``num_samples`` and, for two classes, ``auc`` of probabilities ``(N, C)`` for labels ``(N,)``.

    The one place these are computed, so that a label party evaluating on its own (a Flower ClientApp) reports
    exactly the figures of ``evaluate_vfl``.
    """
    labels = labels.to(torch.int64)
    metrics: dict[str, Any] = {
        "accuracy": float((probabilities.argmax(dim=1) == labels).float().mean()),
        "num_samples": int(labels.shape[0]),
    }
    if probabilities.shape[1] == 2:
        if torch.unique(labels).numel() == 2:
            metrics["auc"] = float(roc_auc_score(labels.numpy(), probabilities[:, 1].numpy()))
        else:
            metrics["auc"] = float("nan")
    return metrics
