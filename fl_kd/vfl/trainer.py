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
import time
from collections.abc import Callable, Sequence
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
    """What happened during training, in the same shape from the in-process loop and the Flower server.

    The methods take a loop's epoch index (from 0); every record, row and log line numbers epochs from 1, as the
    console and the attacks' results do.

    Attributes
    ----------
    epoch_losses : list[float]
        Mean training loss of the batches completed in each epoch (NaN for an epoch with none).
    skipped_batches : list[dict[str, Any]]
        ``{"epoch", "batch", "reason"}`` of every batch skipped because a party failed or sent malformed data.
    failed_updates : list[dict[str, Any]]
        ``{"epoch", "batch", "party", "reason"}`` of every gradient a feature party refused or failed to apply;
        the label party had already stepped on that batch.
    num_batches : int
        Number of batches attempted.
    epoch_seconds : list[float]
        Wall seconds of each epoch.
    evaluations : list[dict[str, Any]]
        The rows of the epochs after which MP was evaluated (see :meth:`epoch_row`).
    """

    epoch_losses: list[float] = field(default_factory=list)
    skipped_batches: list[dict[str, Any]] = field(default_factory=list)
    failed_updates: list[dict[str, Any]] = field(default_factory=list)
    num_batches: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, epoch: int, batch: int, reason: str) -> None:
        """Record (and log) a batch that no party updated on."""
        logger.warning("epoch %d batch %d skipped: %s", epoch + 1, batch, reason)
        self.skipped_batches.append({"epoch": epoch + 1, "batch": batch, "reason": reason})

    def fail_update(self, epoch: int, batch: int, party: int, reason: str) -> None:
        """Record (and log) a gradient that feature party ``party`` did not apply."""
        logger.warning(
            "epoch %d batch %d: feature party %d did not apply its gradient: %s", epoch + 1, batch, party, reason
        )
        self.failed_updates.append({"epoch": epoch + 1, "batch": batch, "party": party, "reason": reason})

    def end_epoch(self, epoch: int, losses: Sequence[float], seconds: float, mp: float | None = None) -> dict[str, Any]:
        """Close epoch ``epoch``: record its mean loss and time; returns its row (and keeps it when evaluated).

        The row, ``{"epoch", "loss", "skipped_batches", "seconds"}`` plus ``"mp"`` when MP was evaluated, is what
        a run reports per epoch, whichever runtime trains.
        """
        self.epoch_losses.append(float(np.mean(losses)) if len(losses) else float("nan"))
        self.epoch_seconds.append(seconds)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": self.epoch_losses[-1],
            "skipped_batches": sum(1 for skipped in self.skipped_batches if skipped["epoch"] == epoch + 1),
            "seconds": seconds,
        }
        if mp is not None:
            row["mp"] = mp
            self.evaluations.append(row)
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        return row


def evaluation_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether MP is evaluated after ``epoch`` (0-based) when asked for every ``every`` epochs (0: never).

    Never after the last epoch: the final evaluation reports that one.
    """
    return every > 0 and (epoch + 1) % every == 0 and epoch + 1 < epochs


Evaluator = Callable[[int], "float | None"]
"""Called after each epoch with its index; returns MP when it evaluated the model then, else ``None``."""

EpochReport = Callable[[dict[str, Any]], None]
"""Receives each epoch's row (see :meth:`TrainingHistory.end_epoch`), e.g. to print it."""


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
    evaluate: Evaluator | None = None,
    report: EpochReport | None = None,
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
    evaluate : Evaluator | None (default: None)
        Called after each epoch, may evaluate MP; the epoch's time includes it, as it does on Flower.
    report : EpochReport | None (default: None)
        Receives each epoch's row.

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
        start_time = time.perf_counter()
        losses: list[float] = []
        batches = list(enumerate(batch_order(num_samples, batch_size, seed, epoch)))
        for start in range(0, len(batches), batches_per_message):
            chunk = batches[start : start + batches_per_message]
            history.num_batches += len(chunk)
            embedded = []
            for batch, ids in chunk:
                embeddings, problem = _embed_all(feature_parties, ids)
                if embeddings is None:
                    history.skip(epoch, batch, problem)
                else:
                    embedded.append((batch, ids, embeddings))
            stepped = []
            for batch, ids, embeddings in embedded:
                try:
                    loss, grads = label_party.train_step(ids, embeddings)
                except ValueError as err:
                    history.skip(epoch, batch, f"label party rejected the embeddings: {err}")
                    continue
                for attack in attacks:
                    attack.on_gradient(ids, embeddings[attacker_party].detach(), grads[attacker_party])
                losses.append(loss)
                stepped.append((batch, ids, grads))
            for index, party in enumerate(feature_parties):
                for batch, ids, grads in stepped:
                    try:
                        party.apply_gradient(ids, grads[index])
                    except Exception as err:  # noqa: BLE001 - a party's failure must not stop the others
                        history.fail_update(epoch, batch, party.party_id, f"{type(err).__name__}: {err}")
        mp = None if evaluate is None else evaluate(epoch)
        row = history.end_epoch(epoch, losses, time.perf_counter() - start_time, mp)
        if report is not None:
            report(row)

    attacker = feature_parties[attacker_party]
    for attack in attacks:
        attack.after_training(attacker.bottom_model, attacker.features)
    return history


def _embed_all(feature_parties: Sequence[FeatureParty], ids: Tensor) -> tuple[list[Tensor] | None, str]:
    """Every party's embedding of ``ids``, or ``None`` and why when any party failed.

    All parties are asked even after one fails, as they would be by one broadcast message, so their step
    counters do not depend on which party failed.
    """
    embeddings, problems = [], []
    for party in feature_parties:
        try:
            embeddings.append(party.embed(ids))
        except Exception as err:  # noqa: BLE001 - a party's failure skips the batch, not the run
            problems.append(f"feature party {party.party_id} failed to embed: {type(err).__name__}: {err}")
    return (None, "; ".join(problems)) if problems else (embeddings, "")


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
