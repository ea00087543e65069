"""MID: a variational information bottleneck on every received embedding.

Zou, Liu et al., "Mutual Information Regularization for Vertical Federated Learning" (arXiv:2301.01142, 2023),
the "MID" defence of VFLAIR. The label party passes each feature party's embedding ``h`` through an encoder to
``(mu, sigma)``, samples ``z = mu + sigma * eps``, decodes ``z`` back to the embedding size and adds
``λ KL(N(mu, sigma^2) || N(0, I))`` to the loss. Bounding the information that flows through ``z`` bounds how
much label information the gradient sent back through the bottleneck can carry.

As in VFLAIR, ``sigma = softplus(s - 5)`` starts small so that early training is not swamped by noise. Unlike
VFLAIR the decoder ends without ReLU (a sum top needs signed logits), and at inference the mean ``mu`` is used
instead of a sample, which keeps predictions deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl_kd.vfl.hooks import LabelDefence
from fl_kd.vfl.models import init_linear_
from fl_kd.vfl.secret import defence_seed


class VariationalBottleneck(nn.Module):
    """``h (B, D) -> z (B, K) -> h' (B, D)`` with a Gaussian posterior over ``z``.

    Parameters
    ----------
    embedding_dim : int
        ``D``, the size of the received embedding (and of the output).
    bottleneck_dim : int
        ``K``, the size of the sampled code.
    hidden : int
        Width of the decoder's hidden layer.
    generator : torch.Generator
        Source of the weight initialisation.
    """

    def __init__(self, embedding_dim: int, bottleneck_dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.bottleneck_dim = bottleneck_dim
        self.encoder = nn.Linear(embedding_dim, 2 * bottleneck_dim)
        self.decoder = nn.Sequential(nn.Linear(bottleneck_dim, hidden), nn.ReLU(), nn.Linear(hidden, embedding_dim))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module, generator)

    def forward(self, embedding: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Decoded embedding ``(B, D)`` and the batch-mean KL divergence to ``N(0, I)`` (a scalar).

        ``noise`` ``(B, K)`` is the standard normal draw; ``None`` uses the mean code.
        """
        stats = self.encoder(embedding)
        mu, raw_std = stats[:, : self.bottleneck_dim], stats[:, self.bottleneck_dim :]
        std = F.softplus(raw_std - 5.0).clamp_min(1e-8)
        code = mu if noise is None else mu + std * noise
        kl = 0.5 * (mu.pow(2) + std.pow(2) - 1.0 - 2.0 * torch.log(std)).sum(dim=1).mean()
        return self.decoder(code), kl


class MIDDefence(LabelDefence):
    """Variational bottleneck per feature party, trained with the top model; loss ``+ λ Σ_k KL_k``.

    Parameters
    ----------
    weight : float (default: 0.01)
        ``λ``, the weight of the KL term (VFLAIR sweeps 0 to 1; larger protects more and costs accuracy).
    bottleneck_dim : int or None (default: None)
        Code size ``K``; the embedding size ``D`` when omitted (VFLAIR's ``bottleneck_scale = 1``).
    hidden : int or None (default: None)
        Decoder width; ``5 K`` when omitted, as in VFLAIR.
    """

    name = "mid"

    def __init__(self, weight: float = 0.01, bottleneck_dim: int | None = None, hidden: int | None = None) -> None:
        if weight < 0:
            raise ValueError(f"weight must be non-negative, got {weight}")
        if bottleneck_dim is not None and bottleneck_dim <= 0:
            raise ValueError(f"bottleneck_dim must be positive, got {bottleneck_dim}")
        self.weight = weight
        self.bottleneck_dim = bottleneck_dim
        self.hidden = hidden
        self.bottlenecks = nn.ModuleList()
        self.code_dims: list[int] = []
        self.generator = torch.Generator()
        self._kl: dict[int, Tensor] = {}

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Build one bottleneck per feature party, initialised from ``seed``; its samples come from the secret."""
        init = torch.Generator().manual_seed(seed)
        self.generator.manual_seed(defence_seed(secret, seed + 1, self.name))
        bottlenecks = []
        for dim in embedding_dims:
            code = self.bottleneck_dim if self.bottleneck_dim is not None else dim
            hidden = self.hidden if self.hidden is not None else 5 * code
            bottlenecks.append(VariationalBottleneck(dim, code, hidden, init))
        self.bottlenecks = nn.ModuleList(bottlenecks)
        self.code_dims = [b.bottleneck_dim for b in bottlenecks]
        self._kl = {}

    def parameters(self) -> list[nn.Parameter]:
        """Bottleneck weights, trained by the label party's optimiser."""
        return list(self.bottlenecks.parameters())

    def _shapes(self) -> list[tuple[int, int, int]]:
        """``(D, K, hidden)`` of each party's bottleneck."""
        shapes = []
        for module in self.bottlenecks:
            bottleneck = cast(VariationalBottleneck, module)
            hidden = cast(nn.Linear, bottleneck.decoder[0]).out_features
            shapes.append((bottleneck.encoder.in_features, bottleneck.bottleneck_dim, hidden))
        return shapes

    def state_dict(self) -> dict[str, Any]:
        """Bottleneck shapes and weights, and the sampling generator's state."""
        return {
            "shapes": [list(shape) for shape in self._shapes()],
            "bottlenecks": self.bottlenecks.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; bottlenecks are rebuilt only when ``setup`` has not built them to that shape."""
        shapes = [(int(d), int(k), int(h)) for d, k, h in state["shapes"]]
        if self._shapes() != shapes:
            init = torch.Generator()  # any initialisation: the saved weights overwrite it
            self.bottlenecks = nn.ModuleList([VariationalBottleneck(d, k, h, init) for d, k, h in shapes])
            self.code_dims = [k for _, k, _ in shapes]
        self.bottlenecks.load_state_dict(state["bottlenecks"])
        self.generator.set_state(state["generator"])
        self._kl = {}

    def transform_embedding(self, party: int, embedding: Tensor) -> Tensor:
        """Pass the embedding ``(B, D)`` through party ``party``'s bottleneck.

        Training steps run with autograd on and draw a sample; inference (the label party predicts under
        ``torch.no_grad``) uses the mean code.
        """
        if party >= len(self.bottlenecks):
            raise RuntimeError("MIDDefence.setup must run before training")
        sampling = torch.is_grad_enabled()
        noise = None
        if sampling:
            shape = (embedding.shape[0], self.code_dims[party])
            noise = torch.randn(shape, generator=self.generator).to(embedding.dtype)
        decoded, kl = self.bottlenecks[party](embedding, noise)
        if sampling:
            self._kl[party] = kl
        return decoded

    def extra_loss(self) -> Tensor | None:
        """``λ`` times the summed KL terms of the current batch (consumed: the next batch starts afresh)."""
        if not self._kl:
            return None
        total = torch.stack(list(self._kl.values())).sum() * self.weight
        self._kl = {}
        return total
