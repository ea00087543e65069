"""Confusional autoencoder (CoAE, also "CAE") label protection.

Zou, Liu et al., "Defending Batch-Level Label Inference and Replacement Attacks in Vertical Federated
Learning", IEEE Transactions on Big Data, 2022 (arXiv:2112.05409). The label party trains, offline and without
any data, an autoencoder whose encoder maps a one-hot label ``y`` to a *confused* soft label ``ỹ`` whose
argmax is another class, and whose decoder maps ``ỹ`` back to ``y``. Split training then uses ``ỹ`` as the
target, so every gradient a feature party receives points at the wrong class; only the label party, which
keeps the decoder, can turn the top model's output back into true-label predictions.

Architecture, loss and training budget follow the authors' training script as recorded in
``docs/methods.md`` §1.2-1.4: hidden width ``encode_dim ** 2`` with ``encode_dim = 2 + 6 C``, weights
``N(0, 0.01)``, loss ``10 CE(D(ỹ), y) - CE(ỹ, y) - λ H(ỹ)`` on near-one-hot synthetic labels, Adam ``5e-4``,
batch 128.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_kd.checkpoint import CheckpointError, read_checkpoint
from fl_kd.config import ConfigError
from fl_kd.vfl.hooks import LabelDefence

logger = logging.getLogger(__name__)

SYNTHETIC_LABEL_TEMPERATURE = 0.025
"""Sharpening temperature of the synthetic training labels: small, so that they are nearly one-hot."""


def default_epochs(num_classes: int) -> int:
    """Epochs over 30 000 synthetic labels after which ``acc p >= 0.99`` and ``acc n ~ 1`` held in our runs.

    Measured with ``entropy_weight = 2``: C=2 passes after one epoch and C=3 after two; C=10 reaches
    ``acc p >= 0.99`` around epoch 6 but fluctuates around 0.99 until about epoch 20 and stays in
    ``[0.991, 0.995]`` after. The authors trained 20 (C=5) to 70 (C=10) epochs.
    """
    if num_classes <= 3:
        return 2
    if num_classes <= 5:
        return 20
    return 30


def sharpen(probabilities: Tensor, temperature: float) -> Tensor:
    """Row-wise ``p^(1/T) / sum_c p_c^(1/T)`` of probabilities ``(B, C)``; the identity at ``T = 1``."""
    return F.softmax(torch.log(probabilities.clamp_min(1e-30)) / temperature, dim=1)


def synthetic_labels(num: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """Near-one-hot training labels ``(num, C)``: ``sharpen(softmax(u), 0.025)`` with ``u ~ U(0, 1)^C``.

    ``sharpen(softmax(u), T)`` equals ``softmax(u / T)``, which is computed directly to avoid underflow.
    """
    uniform = torch.rand(num, num_classes, generator=generator)
    return F.softmax(uniform / SYNTHETIC_LABEL_TEMPERATURE, dim=1)


def _probability_cross_entropy(probabilities: Tensor, targets: Tensor) -> Tensor:
    # As in the authors' code: softmax cross entropy applied to outputs that are already probabilities.
    return -(targets * F.log_softmax(probabilities, dim=1)).sum(dim=1).mean()


def coae_loss(labels: Tensor, confused: Tensor, decoded: Tensor, entropy_weight: float) -> Tensor:
    """``10 CE(D(ỹ), y) - CE(ỹ, y) - λ H(ỹ)`` for labels, confused labels and decoded labels, all ``(B, C)``.

    The first term makes the decoder recover ``y``; the second pushes ``ỹ`` away from ``y``; the entropy term
    (mean of ``-ỹ log(ỹ + 1e-6)`` over all ``B x C`` entries) keeps ``ỹ`` soft so that it hides ``y`` better.
    """
    entropy = (-confused * torch.log(confused + 1e-6)).mean()
    return (
        10.0 * _probability_cross_entropy(decoded, labels)
        - _probability_cross_entropy(confused, labels)
        - entropy_weight * entropy
    )


class ConfusionalAutoencoder(nn.Module):
    """Encoder ``y -> ỹ`` and decoder ``ỹ -> y`` over class distributions ``(B, C)``.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    encode_dim : int or None (default: None)
        ``2 + 6 C`` when omitted (the authors' default); the hidden width is ``encode_dim ** 2``.
    seed : int (default: 0)
        Seed of the ``N(0, 0.01)`` weight initialisation.
    """

    def __init__(self, num_classes: int, encode_dim: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.encode_dim = encode_dim if encode_dim is not None else 2 + 6 * num_classes
        hidden = self.encode_dim**2
        self.encoder = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.decoder = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, 0.01, generator=generator)
                    nn.init.zeros_(module.bias)

    def encode(self, labels: Tensor) -> Tensor:
        """Confused soft labels ``ỹ`` ``(B, C)`` for label distributions ``(B, C)``.

        The authors sharpen ``softmax(E(y))`` with ``T = 1``, which is the identity and therefore omitted.
        """
        return F.softmax(self.encoder(labels), dim=1)

    def decode(self, probabilities: Tensor) -> Tensor:
        """Recovered label distribution ``(B, C)`` from (confused) probabilities ``(B, C)``."""
        return F.softmax(self.decoder(probabilities), dim=1)

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(ỹ, D(ỹ))`` for labels ``(B, C)``."""
        confused = self.encode(labels)
        return confused, self.decode(confused)


def train_autoencoder(
    num_classes: int,
    entropy_weight: float = 2.0,
    epochs: int | None = None,
    num_train: int = 30_000,
    batch_size: int = 128,
    lr: float = 5e-4,
    seed: int = 0,
    encode_dim: int | None = None,
) -> ConfusionalAutoencoder:
    """Train a confusional autoencoder on synthetic near-one-hot labels (no data needed).

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    entropy_weight : float (default: 2.0)
        ``λ`` of the entropy term (the authors' script default; they also used 0-1).
    epochs : int or None (default: None)
        ``default_epochs(num_classes)`` when omitted.
    num_train : int (default: 30000)
        Number of synthetic labels.
    batch_size : int (default: 128)
    lr : float (default: 5e-4)
        Adam learning rate.
    seed : int (default: 0)
        Fixes initialisation, synthetic labels and shuffling.
    encode_dim : int or None (default: None)
        See ``ConfusionalAutoencoder``.
    """
    epochs = default_epochs(num_classes) if epochs is None else epochs
    generator = torch.Generator().manual_seed(seed)
    autoencoder = ConfusionalAutoencoder(num_classes, encode_dim=encode_dim, seed=seed)
    labels = synthetic_labels(num_train, num_classes, generator)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    start = time.perf_counter()
    autoencoder.train()
    for epoch in range(epochs):
        order = torch.randperm(num_train, generator=generator)
        total = 0.0
        for batch in torch.split(order, batch_size):
            y = labels[batch]
            confused, decoded = autoencoder(y)
            loss = coae_loss(y, confused, decoded, entropy_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        logger.debug("CoAE C=%d epoch %d: loss %.4f", num_classes, epoch, total / num_train)
    autoencoder.eval()
    logger.info("trained CoAE for C=%d in %.1f s (%d epochs)", num_classes, time.perf_counter() - start, epochs)
    return autoencoder


@torch.no_grad()
def check_autoencoder(
    autoencoder: ConfusionalAutoencoder, num_test: int = 10_000, seed: int = 1
) -> tuple[float, float]:
    """``(acc p, acc n)`` on fresh synthetic labels.

    ``acc p`` is the fraction of labels the decoder recovers (``argmax D(ỹ) == argmax y``); ``acc n`` the
    fraction the encoder confuses (``argmax ỹ != argmax y``). Our acceptance: ``acc p >= 0.99`` and ``acc n ~
    1``.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = synthetic_labels(num_test, autoencoder.num_classes, generator)
    confused, decoded = autoencoder(labels)
    truth = labels.argmax(dim=1)
    acc_p = float((decoded.argmax(dim=1) == truth).float().mean())
    acc_n = float((confused.argmax(dim=1) != truth).float().mean())
    return acc_p, acc_n


def save_autoencoder(autoencoder: ConfusionalAutoencoder, path: str | Path, **metadata: Any) -> None:
    """Save weights and shape (plus any metadata, e.g. ``entropy_weight``) with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "num_classes": autoencoder.num_classes,
            "encode_dim": autoencoder.encode_dim,
            "state_dict": autoencoder.state_dict(),
            "metadata": metadata,
        },
        path,
    )


def _saved(path: Path) -> dict[str, Any]:
    """What ``save_autoencoder`` wrote at ``path``; :class:`CheckpointError` naming the file for anything else."""
    saved = read_checkpoint(path)
    keys = ("num_classes", "encode_dim", "state_dict", "metadata")
    if not isinstance(saved, dict) or any(key not in saved for key in keys) or not isinstance(saved["metadata"], dict):
        raise CheckpointError(f"autoencoder {path}: not a file save_autoencoder wrote (it holds {', '.join(keys)})")
    return saved


def load_autoencoder(path: str | Path) -> ConfusionalAutoencoder:
    """Load an autoencoder written by ``save_autoencoder``."""
    return _autoencoder(_saved(Path(path)), path)


def _autoencoder(saved: dict[str, Any], path: str | Path) -> ConfusionalAutoencoder:
    """The autoencoder of a checked file's contents (:func:`_saved`)."""
    try:
        autoencoder = ConfusionalAutoencoder(int(saved["num_classes"]), encode_dim=int(saved["encode_dim"]))
        autoencoder.load_state_dict(saved["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"autoencoder {path}: its weights do not load ({type(err).__name__})") from None
    autoencoder.eval()
    return autoencoder


def load_or_train_autoencoder(path: str | Path, num_classes: int, **train_kwargs: Any) -> ConfusionalAutoencoder:
    """Load the autoencoder cached at ``path``, or train one with ``train_kwargs`` and cache it there.

    A cached file is reused only if its class count and training settings match, so changing
    ``entropy_weight`` or the seed never silently returns a stale autoencoder.
    """
    path = Path(path)
    settings = {"num_classes": num_classes, **train_kwargs}
    if path.exists():
        saved = _saved(path)
        if saved["metadata"].get("settings") == settings:
            return _autoencoder(saved, path)  # read once
        raise CheckpointError(
            f"{path} holds an autoencoder trained with {saved['metadata'].get('settings')}, not {settings}; "
            "use another path or delete the file"
        )
    try:  # before training: a folder that cannot be made would only fail once the training is done
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"autoencoder path {path}: its folder cannot be made ({type(err).__name__})") from None
    autoencoder = train_autoencoder(num_classes, **train_kwargs)
    save_autoencoder(autoencoder, path, settings=settings)
    return autoencoder


class CoAEDefence(LabelDefence):
    """Train on confused soft labels ``ỹ = E(onehot(y))``; predict with ``argmax D(softmax(top output))``.

    Parameters
    ----------
    autoencoder : ConfusionalAutoencoder or None (default: None)
        A trained autoencoder; trained in ``setup`` when omitted.
    path : str or None (default: None)
        Cache file for the autoencoder trained in ``setup`` (see ``load_or_train_autoencoder``).
    entropy_weight : float (default: 2.0)
        ``λ`` used when the autoencoder is trained here.
    epochs : int or None (default: None)
        Training epochs when trained here (``default_epochs`` when omitted).
    num_train : int (default: 30000)
        Synthetic labels when trained here.
    """

    name = "coae"

    def __init__(
        self,
        autoencoder: ConfusionalAutoencoder | None = None,
        path: str | None = None,
        entropy_weight: float = 2.0,
        epochs: int | None = None,
        num_train: int = 30_000,
    ) -> None:
        self.autoencoder = autoencoder
        self.path = path
        self.entropy_weight = entropy_weight
        self.epochs = epochs
        self.num_train = num_train

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Train (or load from ``path``) the autoencoder unless one was given; check its class count.

        The autoencoder trains from the run's ``seed``, not the secret, so it can be cached and shared between
        runs (``path``); a feature party can therefore retrain it. CoAE's confusion is a fixed function of the
        class anyway, which the adaptive attacks undo with a few known labels (README, "Vertical FL").
        """
        if self.autoencoder is None:
            kwargs: dict[str, Any] = {
                "entropy_weight": self.entropy_weight,
                # Resolved here so a cache file records the real budget, not "default" (which may change).
                "epochs": default_epochs(num_classes) if self.epochs is None else self.epochs,
                "num_train": self.num_train,
                "seed": seed,
            }
            if self.path is not None:
                self.autoencoder = load_or_train_autoencoder(self.path, num_classes, **kwargs)
            else:
                self.autoencoder = train_autoencoder(num_classes, **kwargs)
        if self.autoencoder.num_classes != num_classes:
            raise ValueError(
                f"the autoencoder was trained for {self.autoencoder.num_classes} classes, the task has {num_classes}"
            )
        # Frozen: the label party must not adapt the encoder to the task, or targets would drift towards y.
        self.autoencoder.eval()
        self.autoencoder.requires_grad_(False)

    def _trained(self) -> ConfusionalAutoencoder:
        if self.autoencoder is None:
            raise RuntimeError("CoAEDefence.setup must run before training")
        return self.autoencoder

    def state_dict(self) -> dict[str, Any]:
        """The trained autoencoder's shape and weights, so a restored label party never retrains it."""
        autoencoder = self._trained()
        return {
            "num_classes": autoencoder.num_classes,
            "encode_dim": autoencoder.encode_dim,
            "autoencoder": autoencoder.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the autoencoder from ``state_dict()`` (in place when the shapes match), frozen as in ``setup``."""
        num_classes, encode_dim = int(state["num_classes"]), int(state["encode_dim"])
        current = self.autoencoder
        if current is None or (current.num_classes, current.encode_dim) != (num_classes, encode_dim):
            current = ConfusionalAutoencoder(num_classes, encode_dim=encode_dim)
        current.load_state_dict(state["autoencoder"])
        current.eval()
        current.requires_grad_(False)
        self.autoencoder = current

    @torch.no_grad()
    def encode_targets(self, labels: Tensor, num_classes: int) -> Tensor:
        """Confused soft labels ``(B, C)`` for integer labels ``(B,)``."""
        one_hot = F.one_hot(labels, num_classes).to(torch.float32)
        return self._trained().encode(one_hot)

    @torch.no_grad()
    def decode_probabilities(self, probabilities: Tensor) -> Tensor:
        """True-label probabilities ``(B, C)`` decoded from the top model's softmax output ``(B, C)``."""
        return self._trained().decode(probabilities)
