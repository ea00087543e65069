"""CoAE's confused targets with Gaussian noise on every sent gradient.

CoAE alone (Zou et al., IEEE TBD 2022) makes each class's gradients point at a fixed wrong class, so they still
cluster by class and a few known labels name the clusters (0.95 worst-case AP on Fashion-MNIST halves). Noise of
a fixed scale on each sent gradient (the label-DP-style baseline of Li et al., ICLR 2022) blurs that per-sample
structure; on top of CoAE the attacker must first undo the noise and then the relabelling, so less noise is
needed than alone, and CoAE's decoder keeps the label party's predictions of the true labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fl_kd.vfl.defences.coae import CoAEDefence, ConfusionalAutoencoder
from fl_kd.vfl.defences.noise import GaussianNoiseDefence


class CoAENoiseDefence(CoAEDefence):
    """CoAE targets and decoding, plus ``N(0, scale^2)`` noise (after optional per-row clipping) on each gradient.

    Parameters
    ----------
    scale : float (default: 0.01)
        Standard deviation of the noise on each gradient entry.
    clip_norm : float or None (default: None)
        Per-row L2 clipping before the noise; none when omitted.
    noise_seed : int or None (default: None)
        Picks another noise stream under the label party's secret (:func:`fl_kd.vfl.secret.defence_seed`).
    autoencoder, path, entropy_weight, epochs, num_train
        As for ``CoAEDefence``.
    """

    name = "coae_noise"

    def __init__(
        self,
        scale: float = 0.01,
        clip_norm: float | None = None,
        noise_seed: int | None = None,
        autoencoder: ConfusionalAutoencoder | None = None,
        path: str | None = None,
        entropy_weight: float = 2.0,
        epochs: int | None = None,
        num_train: int = 30_000,
    ) -> None:
        super().__init__(autoencoder, path, entropy_weight, epochs, num_train)
        self.noise = GaussianNoiseDefence(scale=scale, clip_norm=clip_norm, seed=noise_seed)

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Train or load the autoencoder (``CoAEDefence.setup``) and seed the noise from the label party's secret."""
        super().setup(num_classes, embedding_dims, seed, secret)
        self.noise.setup(num_classes, embedding_dims, seed, secret)

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """``clip(gradient) + noise`` for a gradient ``(B, D)``."""
        return self.noise.protect_gradient(party, gradient)

    def state_dict(self) -> dict[str, Any]:
        """The autoencoder (see ``CoAEDefence.state_dict``) and the noise generator."""
        return {**super().state_dict(), "noise": self.noise.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the autoencoder and the noise generator."""
        super().load_state_dict(state)
        self.noise.load_state_dict(state["noise"])
