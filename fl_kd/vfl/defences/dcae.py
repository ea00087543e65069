"""Discrete SGD on sent gradients, alone or on top of CoAE (DCAE).

Zou, Liu et al., "Defending Batch-Level Label Inference and Replacement Attacks in Vertical Federated
Learning", IEEE TBD 2022 (arXiv:2112.05409): DCAE = CoAE + DiscreteSGD. Each gradient entry is rounded to a
grid of ``W = bin_numbers + 1`` levels; the bin width ``2 σ / (W // 2)`` comes from the standard deviation
``σ`` of the first gradient sent to that party and is then kept, as in VFLAIR's implementation. Coarse
gradients blur the fine per-sample structure that gradient-inversion (batch label inference) attacks fit.

Unlike VFLAIR, values beyond ``±(W // 2)`` bins are clipped, so every sent gradient takes at most ``W``
distinct values; without the clip a rare large entry would escape the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fl_kd.vfl.defences.coae import CoAEDefence, ConfusionalAutoencoder
from fl_kd.vfl.hooks import LabelDefence


def discretise(gradient: Tensor, bin_size: float, num_levels: int) -> Tensor:
    """Round ``gradient`` to multiples of ``bin_size``, clipped to ``num_levels`` levels centred on zero.

    With odd ``num_levels = W`` the levels are ``k * bin_size`` for ``k`` in ``[-(W // 2), W // 2]``.
    """
    if bin_size <= 0:
        raise ValueError(f"bin_size must be positive, got {bin_size}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}")
    half = num_levels // 2
    # An even W cannot centre on zero; drop one level so the grid stays symmetric and has at most W values.
    low = -half if num_levels % 2 else -(half - 1)
    return torch.round(gradient / bin_size).clamp(low, half) * bin_size


class GradientDiscretiser:
    """Per-party discretisation with a bin width fixed from the first non-constant gradient seen.

    Parameters
    ----------
    bin_numbers : int (default: 12)
        ``W - 1``; VFLAIR's default of 12 gives 13 levels.
    """

    def __init__(self, bin_numbers: int = 12) -> None:
        if bin_numbers < 1:
            raise ValueError(f"bin_numbers must be at least 1, got {bin_numbers}")
        self.num_levels = bin_numbers + 1
        self.bin_sizes: dict[int, float] = {}

    def __call__(self, party: int, gradient: Tensor) -> Tensor:
        if party not in self.bin_sizes:
            sigma = float(gradient.std()) if gradient.numel() > 1 else 0.0
            if not sigma > 0 or sigma == float("inf"):
                # A constant first gradient gives no scale to build the grid from; wait for one that does.
                return gradient
            self.bin_sizes[party] = 2.0 * sigma / (self.num_levels // 2)
        return discretise(gradient, self.bin_sizes[party], self.num_levels)

    def state_dict(self) -> dict[str, Any]:
        """The bin width fixed for each party so far (lists, so that ``torch.load(weights_only=True)`` reads them)."""
        parties = sorted(self.bin_sizes)
        return {"parties": parties, "bin_sizes": [self.bin_sizes[party] for party in parties]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the bin widths of ``state_dict()``."""
        self.bin_sizes = {
            int(party): float(size) for party, size in zip(state["parties"], state["bin_sizes"], strict=True)
        }


class DiscreteSGDDefence(LabelDefence):
    """Discrete SGD alone: one-hot targets, discretised gradients (VFLAIR's "DiscreteSGD")."""

    name = "discrete_sgd"

    def __init__(self, bin_numbers: int = 12) -> None:
        self.discretiser = GradientDiscretiser(bin_numbers)

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """Gradient ``(B, D)`` rounded to at most ``bin_numbers + 1`` levels."""
        return self.discretiser(party, gradient)

    def state_dict(self) -> dict[str, Any]:
        """The bin widths fixed so far."""
        return {"discretiser": self.discretiser.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the bin widths."""
        self.discretiser.load_state_dict(state["discretiser"])


class DCAEDefence(CoAEDefence):
    """CoAE's confused targets plus discrete SGD on every gradient sent to a feature party.

    Parameters
    ----------
    bin_numbers : int (default: 12)
        See ``GradientDiscretiser``.
    autoencoder, path, entropy_weight, epochs, num_train
        As for ``CoAEDefence``.
    """

    name = "dcae"

    def __init__(
        self,
        bin_numbers: int = 12,
        autoencoder: ConfusionalAutoencoder | None = None,
        path: str | None = None,
        entropy_weight: float = 2.0,
        epochs: int | None = None,
        num_train: int = 30_000,
    ) -> None:
        super().__init__(autoencoder, path, entropy_weight, epochs, num_train)
        self.discretiser = GradientDiscretiser(bin_numbers)

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """Gradient ``(B, D)`` rounded to at most ``bin_numbers + 1`` levels."""
        return self.discretiser(party, gradient)

    def state_dict(self) -> dict[str, Any]:
        """The autoencoder (see ``CoAEDefence.state_dict``) and the bin widths fixed so far."""
        return {**super().state_dict(), "discretiser": self.discretiser.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the autoencoder and the bin widths."""
        super().load_state_dict(state)
        self.discretiser.load_state_dict(state["discretiser"])
