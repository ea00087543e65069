"""Fixed hook points of split (vertical) training where defences and attacks plug in.

The training loop calls these hooks and nothing else, so adding a defence or an attack never touches the loop.
Defences run on the label party (the active party, which holds the labels); attacks run on a feature party
(a passive party) and only see what that party legitimately receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class LabelDefence:
    """A defence run by the label party. The base class is the identity (no defence).

    Hook order per mini-batch on the label party:
    1. ``transform_embedding(party, h)`` on each received embedding before the top model (e.g. MID bottleneck);
    2. ``encode_batch_targets(sample_ids, labels)`` gives the training targets (by default ``encode_targets(labels)``,
       e.g. CoAE's confused soft labels; a defence whose fake label depends on the sample overrides the former);
    3. ``extra_loss()`` adds any regulariser produced in step 1;
    4. ``protect_gradient(party, grad)`` on each gradient before it is sent back (noise, sparsification, ...).
    At inference the label party applies ``decode_probabilities`` to the top model's softmax output.
    """

    name: str = "none"
    binary_only: bool = False
    """True for a defence that protects two-class tasks only: a run with more classes is refused before training."""
    sum_top_only: bool = False
    """True for a defence that needs every feature party's embedding to be its logits (``vfl_model.top=sum``)."""

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Prepare state once the task is known (train or load an autoencoder, build a bottleneck).

        ``seed`` is the run's seed, which every party knows: fine for what need not be hidden (an autoencoder's
        training, initial weights). Every draw that hides labels (keys, noise) must come from ``secret``, the label
        party's secret (:mod:`fl_kd.vfl.secret`), through :func:`fl_kd.vfl.secret.defence_seed`; ``None`` only when a
        defence is used on its own, as in its unit tests.
        """

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the label party's optimiser must also update."""
        return []

    def transform_embedding(self, party: int, embedding: Tensor) -> Tensor:
        """Map a feature party's embedding ``(B, D)`` before the top model."""
        return embedding

    def extra_loss(self) -> Tensor | None:
        """A regulariser computed during ``transform_embedding`` (None when there is none)."""
        return None

    def encode_targets(self, labels: Tensor, num_classes: int) -> Tensor:
        """Training targets ``(B, C)`` for integer labels ``(B,)``; one-hot by default."""
        return torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)

    def encode_batch_targets(self, sample_ids: Tensor, labels: Tensor, num_classes: int) -> Tensor:
        """Training targets ``(B, C)`` of the samples ``sample_ids`` ``(B,)`` with integer labels ``(B,)``.

        The label party calls this one; it defers to ``encode_targets``, so only a defence whose targets depend on
        the sample itself (a per-sample secret key) needs the ids.
        """
        return self.encode_targets(labels, num_classes)

    def decode_probabilities(self, probabilities: Tensor) -> Tensor:
        """Map the top model's class probabilities ``(B, C)`` to predictions of the true labels."""
        return probabilities

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """Transform the gradient ``(B, D)`` sent to feature party ``party``."""
        return gradient

    def state_dict(self) -> dict[str, Any]:
        """Everything ``setup`` built and training changed (weights, random generators, cached scales).

        A label party that is rebuilt for every message (a Flower ClientApp) restores it to continue exactly where
        it stopped. Values must load with ``torch.load(..., weights_only=True)``: tensors, numbers, strings,
        ``None``, and lists or dicts of those.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``, either after ``setup`` or *instead of* it.

        Skipping ``setup`` is what makes a restore cheap (CoAE would otherwise retrain its autoencoder), so this
        must rebuild whatever ``setup`` builds. When called after ``setup`` it must keep the existing parameter
        objects, which the label party's optimiser already holds.
        """


class FeaturePartyAttack:
    """A label-inference attack run by one feature party. The base class observes nothing.

    The attacker sees, per mini-batch, the sample ids, its own embedding and the gradient it receives; after
    training it may use its own bottom model (model completion). ``result`` scores the attack against the
    true labels, which only the evaluation harness passes in.
    """

    name: str = "none"
    binary_only: bool = False
    """True for an attack that scores two-class tasks only: a run with more classes is refused before training."""
    sum_top_only: bool = False
    """True for an attack that reads the received gradient as one entry per class, which only ``vfl_model.top=sum``
    sends (the gradient of the party's logits): another top is refused before training."""

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        """Observe one mini-batch: ids ``(B,)``, embedding ``(B, D)`` and received gradient ``(B, D)``."""

    def after_training(self, bottom_model: torch.nn.Module, features: Tensor) -> None:
        """Called once with the attacker's trained bottom model and its feature columns."""

    def result(self, labels: Tensor) -> dict[str, Any]:
        """Attack performance against the true labels of the training samples (indexed by sample id)."""
        return {}
