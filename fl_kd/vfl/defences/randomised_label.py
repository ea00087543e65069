"""Per-sample randomised labels: the feature party learns from a fake label drawn per sample with a secret key.

CoAE, DCAE and any defence whose fake label is a fixed function of the class leave per-sample gradients that
cluster by class, and a few known labels name the clusters. Here each training sample ``i`` gets its own fake label
from a secret key ``k_i`` that only the label party holds: randomised response (Warner 1965; label-DP training,
Ghazi et al., "Deep Learning with Label Differential Privacy", NeurIPS 2021) keeps the true class with probability
``q = e^ε / (e^ε + C - 1)`` and otherwise names one of the other ``C - 1`` classes uniformly. The key is a hash of
the label party's secret (:mod:`fl_kd.vfl.secret`, never in the run config) and the sample id, so a sample gets the
*same* fake label in every epoch: an attacker averaging a sample's gradients over epochs learns nothing more.

The gradient a feature party receives is that of its own logits' cross entropy with the fake label,
``(softmax(h_k) - onehot(fake)) / B``, not the joint loss's ``(softmax(sum of logits) - onehot(y)) / B``: the
feature party already knows ``softmax(h_k)``, so the message carries the fake label and nothing else. The joint
softmax would leak the label party's own (accurate) prediction, which a reader of the largest gradient entry
recovers once training converges. Everything the feature party sees is therefore a function of randomised
response, which is ``ε``-label-DP against any attack on the gradients, adaptive or not; on a binary task the best
ROC-AUC of any score of the fake label is ``q``.

The label party trains its own bottom model on the true labels through the summed logits, so its predictions need
no decoding; the label party "decodes" its training samples by its keys and its test predictions are of true labels.
Needs the sum top (each feature party's embedding is its logits).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fl_kd.config import ConfigError
from fl_kd.vfl.hooks import LabelDefence
from fl_kd.vfl.secret import defence_seed

_SALT = 0x5EC2E7  # keeps the key stream apart from any other use of the same seed


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """Steele et al.'s SplitMix64 finaliser on uint64 values: a fast, well-mixed, stateless hash."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_keys(secret: int, sample_ids: Tensor, stream: int) -> np.ndarray:
    """Uniform numbers in ``[0, 1)`` ``(B,)``, one per sample id, fixed by ``(secret, stream, id)``."""
    base = _splitmix64(np.asarray([secret * 4 + stream], dtype=np.uint64))
    hashed = _splitmix64(base ^ sample_ids.numpy().astype(np.uint64))
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def keep_probability(epsilon: float, num_classes: int) -> float:
    """``e^ε / (e^ε + C - 1)``: how often randomised response keeps the true class."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)


def fake_labels(secret: int, sample_ids: Tensor, labels: Tensor, num_classes: int, epsilon: float) -> Tensor:
    """Each sample's fake label ``(B,)``: its true label with probability ``q``, else another class uniformly."""
    keep = torch.from_numpy(sample_keys(secret, sample_ids, 0) < keep_probability(epsilon, num_classes))
    draw = torch.from_numpy((sample_keys(secret, sample_ids, 1) * (num_classes - 1)).astype(np.int64))
    other = draw + (draw >= labels).to(torch.int64)  # a uniform class among the C - 1 that are not the label
    return torch.where(keep, labels, other)


class RandomisedLabelDefence(LabelDefence):
    """Send each feature party the gradient of its own logits against a secret per-sample fake label.

    Parameters
    ----------
    epsilon : float (default: 0.5)
        Label-DP ``ε`` of the randomised response: the fake label is the true one with probability
        ``e^ε / (e^ε + C - 1)`` (0.155 for ten classes, 0.622 for two); ``0`` makes it independent of the label.
    seed : int or None (default: None)
        Picks another key stream under the label party's secret (:func:`fl_kd.vfl.secret.defence_seed`).
    """

    name = "randomised_label"
    sum_top_only = True

    def __init__(self, epsilon: float = 0.5, seed: int | None = None) -> None:
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon must be finite and non-negative, got {epsilon}")
        self.epsilon = epsilon
        self.seed = seed
        self.secret = _SALT if seed is None else seed * 1_000_003 + _SALT
        self._fake: Tensor | None = None
        self._embeddings: dict[int, Tensor] = {}

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Derive the key from the label party's secret; refuse a top that is not the sum of logits.

        Without a secret (the defence on its own) the key follows from ``seed`` as it always did.
        """
        if any(dim != num_classes for dim in embedding_dims):
            raise ConfigError(
                f"randomised_label needs each feature party's embedding to be its logits (vfl_model.top=sum), "
                f"got embedding widths {embedding_dims} for {num_classes} classes"
            )
        if secret is not None:
            self.secret = defence_seed(secret, seed, self.name, self.seed)
        elif self.seed is None:
            self.secret = seed * 1_000_003 + _SALT

    def transform_embedding(self, party: int, embedding: Tensor) -> Tensor:
        """Keep each received embedding (the feature party's logits ``(B, C)``) for its local gradient."""
        self._embeddings[party] = embedding.detach()
        return embedding

    def encode_batch_targets(self, sample_ids: Tensor, labels: Tensor, num_classes: int) -> Tensor:
        """True one-hot targets ``(B, C)`` for the label party's own models; draws the batch's fake labels."""
        self._fake = fake_labels(self.secret, sample_ids, labels, num_classes, self.epsilon)
        return F.one_hot(labels, num_classes).to(torch.float32)

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """``(softmax(h_party) - onehot(fake)) / B`` ``(B, C)`` in place of the joint loss's gradient."""
        embedding = self._embeddings.get(party)
        if self._fake is None or embedding is None or embedding.shape != gradient.shape:
            raise RuntimeError("randomised_label: protect_gradient must follow this batch's targets and embeddings")
        fake = F.one_hot(self._fake, gradient.shape[1]).to(gradient.dtype)
        return (F.softmax(embedding.to(gradient.dtype), dim=1) - fake) / gradient.shape[0]
