"""Additive Gaussian or Laplace noise on the gradients the label party sends.

The differential-privacy style gradient perturbation used as a baseline against label inference in split
learning (e.g. Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR 2022; VFLAIR's
"GaussianDP" and "LaplaceDP"). Noise of a fixed scale drowns the per-sample gradient direction that reveals
the label, at a cost in main-task accuracy that grows with the scale.

VFLAIR first rescales the whole batch so that its largest row norm is at most 0.2; here clipping is optional
and per row (``clip_norm``), the usual DP form, so that the noise scale alone sets the protection by default.

With ``relative`` the noise of each row is scaled by that row's L2 norm over ``sqrt(D)``, so ``scale`` is the ratio
of noise to signal per sample. Noise of a fixed scale protects unevenly over a run: a row's gradient is large in the
first epoch, when most labels leak, and small once the sample is learnt, when the same noise only spoils the feature
party's training. Relative noise holds every row at the same signal-to-noise ratio from start to end. It leaves the
row's norm readable (about ``sqrt(1 + scale^2)`` times the true one), which norm scoring reads on binary tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fl_kd.vfl.hooks import LabelDefence
from fl_kd.vfl.secret import defence_seed


def clip_rows(gradient: Tensor, max_norm: float) -> Tensor:
    """Scale each row of ``gradient`` ``(B, D)`` down so that its L2 norm is at most ``max_norm``."""
    norms = gradient.norm(dim=1, keepdim=True)
    return gradient * (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)


class _NoiseDefence(LabelDefence):
    """Shared parts: parameter checks, optional clipping and a private seeded generator."""

    def __init__(
        self, scale: float = 0.01, clip_norm: float | None = None, seed: int | None = None, relative: bool = False
    ) -> None:
        if scale < 0:
            raise ValueError(f"noise scale must be non-negative, got {scale}")
        if clip_norm is not None and clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        self.scale = scale
        self.clip_norm = clip_norm
        self.seed = seed
        self.relative = bool(relative)
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Seed the noise from the label party's secret (an explicit ``seed`` picks a stream under it)."""
        self.generator.manual_seed(defence_seed(secret, seed, self.name, self.seed))

    def _noise(self, shape: torch.Size) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state: a restored label party must draw the noise it would have drawn next."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the noise generator."""
        self.generator.set_state(state["generator"])

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """``clip(gradient) + noise`` for a gradient ``(B, D)``; with ``relative`` the noise of row ``i`` is
        multiplied by ``||row_i|| / sqrt(D)``."""
        if self.clip_norm is not None:
            gradient = clip_rows(gradient, self.clip_norm)
        if self.scale == 0:
            return gradient
        noise = self._noise(gradient.shape).to(gradient.dtype)
        if self.relative:
            noise = noise * gradient.norm(dim=1, keepdim=True) / gradient.shape[1] ** 0.5
        return gradient + noise


class GaussianNoiseDefence(_NoiseDefence):
    """Add ``N(0, scale^2)`` noise to every gradient entry.

    Parameters
    ----------
    scale : float (default: 0.01)
        Standard deviation of the noise.
    clip_norm : float or None (default: None)
        Per-row L2 clipping before the noise; none when omitted.
    seed : int or None (default: None)
        Picks another noise stream under the label party's secret (:func:`fl_kd.vfl.secret.defence_seed`).
    relative : bool (default: False)
        Scale each row's noise by the row's L2 norm over ``sqrt(D)`` (after clipping): ``scale`` is then the ratio
        of the noise's norm to the gradient's, per sample.
    """

    name = "gaussian"

    def _noise(self, shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=self.generator) * self.scale


class LaplaceNoiseDefence(_NoiseDefence):
    """Add ``Laplace(0, scale)`` noise to every gradient entry (standard deviation ``sqrt(2) * scale``).

    Parameters are those of ``GaussianNoiseDefence``, with ``scale`` the Laplace scale ``b``.
    """

    name = "laplace"

    def _noise(self, shape: torch.Size) -> Tensor:
        # Inverse CDF, so the draw comes from our generator: x = -b sign(u) log(1 - 2|u|), u ~ U(-1/2, 1/2).
        centred = torch.rand(shape, generator=self.generator) - 0.5
        tail = (1.0 - 2.0 * centred.abs()).clamp_min(torch.finfo(torch.float32).tiny)
        return -self.scale * torch.sign(centred) * torch.log(tail)
