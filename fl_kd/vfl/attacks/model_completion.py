"""Passive model completion: turn the attacker's trained bottom model into a label classifier.

Fu et al., "Label Inference Attacks Against Vertical Federated Learning", USENIX Security 2022. Training the
joint model makes each bottom model extract label-relevant features, so a feature party that knows the labels
of a handful of auxiliary samples can fit a small head on its frozen bottom model and label everyone else.
Fu et al. fine-tune with MixMatch; plain supervised fine-tuning of the head is used here.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from fl_kd.vfl.attacks._common import check_labels
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import attack_performance


class PassiveModelCompletion(FeaturePartyAttack):
    """Fit a head on the frozen bottom model with a few labelled samples; AP is its accuracy on the rest.

    Attacker knowledge: the labels of ``num_known`` training samples, drawn (seeded) balanced over the
    classes. The embeddings are standardised with statistics over all the attacker's samples (which need no
    labels) before the head sees them. AP is the accuracy on every other training sample, or the ROC-AUC for a
    binary task.

    Parameters
    ----------
    num_known : int (default: 40)
        Labelled auxiliary samples, ``num_known // C`` per class (at least one).
    hidden : int (default: 32)
        Width of the head's hidden layer; ``0`` gives a linear head.
    steps : int (default: 300)
        Full-batch Adam steps on the auxiliary samples.
    lr : float (default: 0.01)
        Adam learning rate.
    weight_decay : float (default: 1e-3)
        Adam weight decay, a guard against overfitting so few samples.
    num_classes : int | None (default: None)
        Number of classes; ``None`` takes it from the labels passed to ``result``.
    seed : int (default: 0)
        Seed of the auxiliary draw and the head's initialisation.
    """

    name = "passive_model_completion"
    attack_type = "LI"

    def __init__(
        self,
        num_known: int = 40,
        hidden: int = 32,
        steps: int = 300,
        lr: float = 0.01,
        weight_decay: float = 1e-3,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_known < 1 or hidden < 0 or steps < 1:
            raise ValueError("num_known and steps must be positive and hidden non-negative")
        self.num_known, self.hidden, self.steps = num_known, hidden, steps
        self.lr, self.weight_decay = lr, weight_decay
        self.num_classes, self.seed = num_classes, seed
        self._embeddings: Tensor | None = None

    def after_training(self, bottom_model: nn.Module, features: Tensor) -> None:
        """Embed the attacker's feature columns ``(N, ...)`` (row = sample id) with its frozen bottom model.

        The embeddings are computed now so that later training of the same module cannot change them.
        """
        model = copy.deepcopy(bottom_model).eval()
        device = next(model.parameters(), torch.empty(0)).device
        chunks = []
        with torch.no_grad():
            for start in range(0, features.shape[0], 4096):
                chunk = features[start : start + 4096].to(device)
                chunks.append(model(chunk).flatten(start_dim=1).to("cpu", torch.float32))
        self._embeddings = torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def known_indices(self, labels: Tensor, num_classes: int) -> Tensor:
        """Seeded, class-balanced ids ``(K,)`` of the auxiliary samples whose labels the attacker knows."""
        rng = np.random.default_rng(self.seed)
        per_class = max(1, self.num_known // num_classes)
        picked = []
        for label in range(num_classes):
            members = torch.nonzero(labels == label).flatten().numpy()
            if members.size:
                picked.append(rng.choice(members, size=min(per_class, members.size), replace=False))
        return torch.as_tensor(np.sort(np.concatenate(picked)), dtype=torch.int64)

    def result(self, labels: Tensor) -> dict[str, Any]:
        """Accuracy (and binary AUC) of the completed model on the non-auxiliary samples.

        Parameters
        ----------
        labels : Tensor
            True training labels ``(N,)`` aligned with the rows of ``features``.
        """
        labels = check_labels(labels)
        if self._embeddings is None:
            raise ValueError("passive_model_completion needs after_training to be called first")
        if labels.numel() != self._embeddings.shape[0]:
            raise ValueError(f"got {labels.numel()} labels for {self._embeddings.shape[0]} feature rows")
        num_classes = self.num_classes or int(labels.max()) + 1
        if int(labels.max()) >= num_classes:
            raise ValueError(f"labels go up to {int(labels.max())} but num_classes is {num_classes}")
        embeddings = self._standardised()
        known = self.known_indices(labels, num_classes)
        others = torch.ones(labels.numel(), dtype=torch.bool)
        others[known] = False
        head = self._fit_head(embeddings[known], labels[known], num_classes)
        with torch.no_grad():
            probabilities = head(embeddings[others]).softmax(dim=1)
        truth = labels[others]
        accuracy = float((probabilities.argmax(dim=1) == truth).double().mean())
        out: dict[str, Any] = {
            "attack": self.name,
            "attack_type": self.attack_type,
            "accuracy": accuracy,
            "num_known": int(known.numel()),
            "num_samples": int(truth.numel()),
        }
        ap = accuracy
        if num_classes == 2 and truth.unique().numel() == 2:
            ap = out["auc"] = float(roc_auc_score(truth.numpy(), probabilities[:, 1].numpy()))
        return {**out, **attack_performance(ap, num_classes)}

    def _standardised(self) -> Tensor:
        assert self._embeddings is not None
        mean = self._embeddings.mean(dim=0)
        std = self._embeddings.std(dim=0).clamp_min(1e-6)
        return (self._embeddings - mean) / std

    def _fit_head(self, inputs: Tensor, targets: Tensor, num_classes: int) -> nn.Module:
        width = inputs.shape[1]
        # nn.Linear initialises from the global generator; fork it so seeding leaves the caller's state alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head: nn.Module = (
                nn.Linear(width, num_classes)
                if self.hidden == 0
                else nn.Sequential(nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, num_classes))
            )
        optimiser = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                optimiser.zero_grad()
                nn.functional.cross_entropy(head(inputs), targets).backward()
                optimiser.step()
        return head.eval()
