"""The two roles of split (vertical) training: feature parties and the label party.

A *feature party* (passive party) holds some feature columns and a bottom model; it sends embeddings and
receives the gradient of the loss w.r.t. them. The *label party* (active party) holds the labels, the top
model and possibly its own bottom model; it runs the defence hooks of ``fl_kd.vfl.hooks.LabelDefence``. This
follows the two-party setting of Liu et al., "Vertical Federated Learning: Concepts, Advances and Challenges"
(IEEE TKDE 2024) and the VFLAIR benchmark.

Each method here is one message of the protocol and takes plain tensors, so a Flower ClientApp can call it per
message: ``FeatureParty.embed`` -> ``LabelParty.train_step`` -> ``FeatureParty.apply_gradient``. Inputs that
arrive from the other side are checked before anything is updated, because a malformed message must never
corrupt a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_kd.vfl.hooks import LabelDefence
from fl_kd.vfl.optimizers import make_optimizer

SampleIds = Tensor | np.ndarray | Sequence[int]


def as_sample_ids(sample_ids: SampleIds, num_samples: int) -> Tensor:
    """Sample ids as an int64 tensor ``(B,)``, checked to index rows ``[0, num_samples)``."""
    ids = torch.as_tensor(np.asarray(sample_ids) if not isinstance(sample_ids, Tensor) else sample_ids)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"sample_ids must be a non-empty 1-D array, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"sample_ids must be integers, got {ids.dtype}")
    ids = ids.to(torch.int64)
    if int(ids.min()) < 0 or int(ids.max()) >= num_samples:
        raise ValueError(f"sample_ids must lie in [0, {num_samples}), got range [{int(ids.min())}, {int(ids.max())}]")
    return ids


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Batch-mean cross entropy of logits ``(B, C)`` against target distributions ``(B, C)``.

    Soft targets are needed because CoAE trains on its confused soft labels; for one-hot targets this equals
    ``F.cross_entropy``.
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@contextmanager
def _forked_rng(seed: int) -> Iterator[None]:
    # Dropout and similar layers draw from the global generator; forking it per step makes a party's forward
    # pass reproducible and lets ``apply_gradient`` recompute the very same forward pass when it must.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class FeatureParty:
    """A passive party: its feature columns, its bottom model and the optimiser that updates it.

    Parameters
    ----------
    party_id : int
        Index of the party among the feature parties (the label party addresses gradients by it).
    bottom_model : nn.Module
        Maps features ``(B, F)`` to embeddings ``(B, D)``.
    features : Tensor
        The party's aligned training features ``(N, F)``; row ``i`` is sample id ``i``.
    lr : float (default: 0.01)
        Learning rate of the bottom model.
    seed : int (default: 0)
        Seeds the party's forward passes (stochastic layers such as dropout).
    optimizer : str (default: "sgd")
        ``"sgd"`` or ``"adam"``.
    """

    def __init__(
        self,
        party_id: int,
        bottom_model: nn.Module,
        features: Tensor,
        lr: float = 0.01,
        seed: int = 0,
        optimizer: str = "sgd",
    ) -> None:
        if features.dim() < 2 or features.shape[0] == 0:
            raise ValueError(f"features must have shape (N, F) with N > 0, got {tuple(features.shape)}")
        self.party_id = party_id
        self.bottom_model = bottom_model
        self.features = features.to(torch.float32)
        self.seed = seed
        self.optimizer = make_optimizer(list(bottom_model.parameters()), optimizer, lr)
        self._step = 0
        self._pending: tuple[Tensor, Tensor] | None = None

    @property
    def num_samples(self) -> int:
        """Number of aligned training samples the party holds."""
        return int(self.features.shape[0])

    def _forward(self, ids: Tensor, step: int) -> Tensor:
        self.bottom_model.train()
        with _forked_rng(self.seed * 1_000_003 + step):
            return self.bottom_model(self.features[ids])

    def embed(self, sample_ids: SampleIds) -> Tensor:
        """Embeddings ``(B, D)`` of the given samples, still attached to the bottom model's graph.

        The party remembers the forward pass so that ``apply_gradient`` for the same ids can back-propagate
        through it without recomputing.
        """
        ids = as_sample_ids(sample_ids, self.num_samples)
        embedding = self._forward(ids, self._step)
        self._pending = (ids, embedding)
        self._step += 1
        return embedding

    def apply_gradient(self, sample_ids: SampleIds, grad: Tensor) -> None:
        """Back-propagate the received gradient ``(B, D)`` and take one optimiser step.

        Raises
        ------
        ValueError
            If ``grad`` is not a finite tensor of the embedding's shape; the model is left untouched.
        """
        ids = as_sample_ids(sample_ids, self.num_samples)
        if self._pending is not None and torch.equal(self._pending[0], ids):
            embedding = self._pending[1]
        else:
            # No remembered forward pass for these ids (e.g. a message handler restored from a state_dict):
            # recompute it with the seed of the latest embed, which the protocol pairs with this gradient.
            embedding = self._forward(ids, max(self._step - 1, 0))
        if not isinstance(grad, Tensor):
            raise ValueError(f"gradient must be a tensor, got {type(grad).__name__}")
        if tuple(grad.shape) != tuple(embedding.shape):
            raise ValueError(
                f"party {self.party_id}: gradient shape {tuple(grad.shape)} does not match "
                f"embedding shape {tuple(embedding.shape)}"
            )
        if not torch.isfinite(grad).all():
            raise ValueError(f"party {self.party_id}: gradient contains NaN or inf; update refused")
        self._pending = None
        if self.optimizer is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        embedding.backward(grad.to(embedding.dtype))
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, features: Tensor) -> Tensor:
        """Embeddings ``(B, D)`` of new (e.g. test) features ``(B, F)``, without gradients."""
        self.bottom_model.eval()
        return self.bottom_model(features.to(torch.float32))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the party elsewhere: model, optimiser and step counter."""
        return {
            "model": self.bottom_model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "step": self._step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by ``state_dict``."""
        self.bottom_model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._step = int(state["step"])
        self._pending = None


class LabelParty:
    """The active party: labels, top model, optional own bottom model and features, and the label defence.

    Parameters
    ----------
    bottom_model : nn.Module or None
        The label party's own bottom model, or ``None`` when it holds only labels.
    features : Tensor or None
        Its aligned training features ``(N, F_a)`` (required with ``bottom_model``).
    top_model : nn.Module
        Maps a list of embeddings (feature parties first, then the label party's own) to logits ``(B, C)``.
        It must expose ``input_dims`` and ``num_classes`` (``MLPTop`` and ``SumTop`` do) unless
        ``embedding_dims`` and ``num_classes`` are passed.
    labels : Tensor
        Aligned training labels ``(N,)``, int64 in ``[0, C)``.
    defence : LabelDefence or None (default: None)
        Label protection; ``None`` means no defence.
    lr : float (default: 0.01)
        Learning rate of the top model, own bottom model and defence parameters.
    seed : int (default: 0)
        The run's seed: passed to ``defence.setup`` and used for the label party's forward passes.
    optimizer : str (default: "sgd")
        ``"sgd"`` or ``"adam"``.
    embedding_dims : Sequence[int] or None (default: None)
        Embedding size of each feature party; read from ``top_model.input_dims`` when omitted.
    num_classes : int or None (default: None)
        Read from ``top_model.num_classes`` when omitted.
    defence_state : Mapping or None (default: None)
        A defence state saved by ``state_dict()["defence_state"]``: restored instead of running ``defence.setup``,
        which can be expensive (CoAE trains an autoencoder), when the party is rebuilt for every message. An empty
        state (a defence that keeps none) runs ``setup`` as usual.
    secret : int or None (default: None)
        The label party's secret (:mod:`fl_kd.vfl.secret`), from which the defence draws its keys and noise; only
        a party built without a config (unit tests) leaves it out.
    """

    def __init__(
        self,
        bottom_model: nn.Module | None,
        features: Tensor | None,
        top_model: nn.Module,
        labels: Tensor,
        defence: LabelDefence | None = None,
        lr: float = 0.01,
        seed: int = 0,
        optimizer: str = "sgd",
        embedding_dims: Sequence[int] | None = None,
        num_classes: int | None = None,
        defence_state: Mapping[str, Any] | None = None,
        secret: int | None = None,
    ) -> None:
        if (bottom_model is None) != (features is None):
            raise ValueError("the label party needs both a bottom model and features, or neither")
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
        if features is not None and features.shape[0] != labels.shape[0]:
            raise ValueError(f"features have {features.shape[0]} rows but labels have {labels.shape[0]}")
        self.bottom_model = bottom_model
        self.features = None if features is None else features.to(torch.float32)
        self.top_model = top_model
        self.labels = labels.to(torch.int64)
        self.num_classes = int(num_classes if num_classes is not None else cast(int, top_model.num_classes))
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        if embedding_dims is None:
            dims = list(cast(Sequence[int], top_model.input_dims))
            embedding_dims = dims[:-1] if bottom_model is not None else dims
        self.embedding_dims = [int(d) for d in embedding_dims]
        if not self.embedding_dims:
            raise ValueError("split training needs at least one feature party")
        self.defence = defence if defence is not None else LabelDefence()
        self.seed = seed
        if defence_state:
            self.defence.load_state_dict(defence_state)
        else:  # nothing saved (or a defence that keeps no state): set up as usual
            self.defence.setup(self.num_classes, list(self.embedding_dims), seed, secret)
        params = list(top_model.parameters()) + list(self.defence.parameters())
        if bottom_model is not None:
            params += list(bottom_model.parameters())
        self.optimizer = make_optimizer(params, optimizer, lr)
        self._step = 0

    @property
    def num_samples(self) -> int:
        """Number of aligned training samples."""
        return int(self.labels.shape[0])

    @property
    def num_feature_parties(self) -> int:
        """Number of feature parties whose embeddings ``train_step`` expects."""
        return len(self.embedding_dims)

    def _check_embeddings(self, embeddings: Sequence[Tensor], batch_size: int) -> None:
        if len(embeddings) != self.num_feature_parties:
            raise ValueError(f"expected {self.num_feature_parties} embeddings, got {len(embeddings)}")
        for party, (embedding, dim) in enumerate(zip(embeddings, self.embedding_dims, strict=True)):
            if not isinstance(embedding, Tensor):
                raise ValueError(f"embedding of party {party} must be a tensor, got {type(embedding).__name__}")
            if tuple(embedding.shape) != (batch_size, dim):
                raise ValueError(
                    f"embedding of party {party} has shape {tuple(embedding.shape)}, expected ({batch_size}, {dim})"
                )
            if not torch.isfinite(embedding).all():
                raise ValueError(f"embedding of party {party} contains NaN or inf")

    def _logits(self, embeddings: Sequence[Tensor], own_features: Tensor | None) -> Tensor:
        inputs = [self.defence.transform_embedding(party, h) for party, h in enumerate(embeddings)]
        if self.bottom_model is not None:
            if own_features is None:
                raise ValueError("the label party holds features; pass its own features for these samples")
            inputs.append(self.bottom_model(own_features.to(torch.float32)))
        return self.top_model(inputs)

    def train_step(self, sample_ids: SampleIds, embeddings: Sequence[Tensor]) -> tuple[float, list[Tensor]]:
        """One training step on a mini-batch; returns the loss and the gradient to send to each feature party.

        Hook order (see ``LabelDefence``): ``transform_embedding`` -> top model -> ``encode_batch_targets`` ->
        ``extra_loss`` -> update -> ``protect_gradient``.

        Parameters
        ----------
        sample_ids : Tensor
            Ids ``(B,)`` of the batch's samples.
        embeddings : Sequence[Tensor]
            One embedding ``(B, D_k)`` per feature party, in party order.

        Returns
        -------
        tuple[float, list[Tensor]]
            The training loss (including any defence regulariser) and one detached gradient ``(B, D_k)`` per
            feature party, after ``protect_gradient``.

        Raises
        ------
        ValueError
            On wrong ids, a wrong number of embeddings, mis-shaped or non-finite embeddings, or a non-finite
            loss; raised before any parameter changes.
        """
        ids = as_sample_ids(sample_ids, self.num_samples)
        self._check_embeddings(embeddings, int(ids.shape[0]))
        # Detach: the label party only ever sees the values sent to it, and needs the gradient w.r.t. them.
        received = [h.detach().to(torch.float32).clone().requires_grad_(True) for h in embeddings]
        self.top_model.train()
        if self.bottom_model is not None:
            self.bottom_model.train()
        own = None if self.features is None else self.features[ids]
        with _forked_rng(self.seed * 1_000_003 + self._step):
            logits = self._logits(received, own)
        targets = self.defence.encode_batch_targets(ids, self.labels[ids], self.num_classes)
        loss = soft_cross_entropy(logits, targets)
        extra = self.defence.extra_loss()
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise ValueError("training loss is not finite; update refused")
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        self._step += 1
        grads = []
        for party, h in enumerate(received):
            grad = h.grad if h.grad is not None else torch.zeros_like(h)
            grads.append(self.defence.protect_gradient(party, grad.detach()).detach())
        return float(loss.detach()), grads

    @torch.no_grad()
    def predict(self, embeddings: Sequence[Tensor], own_features: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, C)`` for test embeddings, after the defence's ``decode_probabilities``.

        Parameters
        ----------
        embeddings : Sequence[Tensor]
            One embedding ``(B, D_k)`` per feature party.
        own_features : Tensor or None (default: None)
            The label party's own features ``(B, F_a)`` for the same samples, when it holds features.
        """
        batch_size = int(embeddings[0].shape[0]) if len(embeddings) else 0
        self._check_embeddings(embeddings, batch_size)
        self.top_model.eval()
        if self.bottom_model is not None:
            self.bottom_model.eval()
        logits = self._logits([h.to(torch.float32) for h in embeddings], own_features)
        return self.defence.decode_probabilities(F.softmax(logits, dim=1))

    def state_dict(self) -> dict[str, Any]:
        """Top model, own bottom model, optimiser, the defence's parameters and state, and the step counter."""
        return {
            "top": self.top_model.state_dict(),
            "bottom": None if self.bottom_model is None else self.bottom_model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "defence": [p.detach().clone() for p in self.defence.parameters()],
            "defence_state": self.defence.state_dict(),
            "step": self._step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by ``state_dict``."""
        self.top_model.load_state_dict(state["top"])
        if self.bottom_model is not None:
            self.bottom_model.load_state_dict(state["bottom"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if "defence_state" in state:
            self.defence.load_state_dict(state["defence_state"])
        params = self.defence.parameters()
        if len(params) != len(state["defence"]):
            raise ValueError("saved defence parameters do not match this party's defence")
        with torch.no_grad():
            for param, value in zip(params, state["defence"], strict=True):
                param.copy_(value)
        self._step = int(state["step"])
