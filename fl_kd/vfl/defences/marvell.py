"""Marvell: the Gaussian noise that best hides the label of a binary task's gradients, under a noise budget.

Li, Sun, Yang, Gao, Zhang, Xie, Smith and Wang, "Label Leakage and Protection in Two-party Split Learning",
ICLR 2022. Per batch, the label party models the gradients of negatives and positives as Gaussians around their
class means ``g0`` and ``g1`` with isotropic spreads ``u`` and ``v`` (the mean per-coordinate variance within each
class), and adds to each sample noise of its own class's covariance

    Σ_y = λ_y1 e e^T + λ_y2 (I - e e^T),  e = (g1 - g0) / ||g1 - g0||,

chosen to minimise the sum of the two KL divergences between the noisy classes (a bound on how well any scoring
of the gradients can tell them apart) subject to the expected noise power
``p (λ11 + (d-1) λ12) + (1-p) (λ01 + (d-1) λ02) <= P``, ``p`` the batch's fraction of positives. As in the paper's
experiments the budget is a multiple of the class-mean gap, ``P = power_ratio * ||g1 - g0||^2``. The four-variable
convex problem is solved here with SLSQP on values scaled by ``||g1 - g0||^2``; the paper's authors solve it by
alternating one-dimensional minimisations.

Binary tasks only. A batch holding one class gives no mean gap: its samples get isotropic noise of the power of
the last budget (or of their own mean squared norm before any).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits
from torch import Tensor

from fl_kd.vfl.hooks import LabelDefence
from fl_kd.vfl.secret import defence_seed

_TINY = 1e-9


def sum_kl(lams: np.ndarray, u: float, v: float, d: int, gap: float) -> float:
    """Sum of the two KL divergences (up to constants) between the noisy classes; ``lams`` = (λ01, λ02, λ11, λ12)."""
    l01, l02, l11, l12 = (float(x) for x in lams)
    neg_e, neg_o, pos_e, pos_o = l01 + u + _TINY, l02 + u + _TINY, l11 + v + _TINY, l12 + v + _TINY
    return (d - 1) * (neg_o / pos_o + pos_o / neg_o) + (neg_e + gap) / pos_e + (pos_e + gap) / neg_e


def solve_covariances(u: float, v: float, d: int, gap: float, p: float, power: float) -> np.ndarray:
    """``(λ01, λ02, λ11, λ12)`` minimising :func:`sum_kl` under the power budget (all values in units of ``gap``)."""
    weights = np.array([1 - p, (1 - p) * (d - 1), p, p * (d - 1)])

    def objective(x: np.ndarray) -> float:
        return sum_kl(x, u, v, d, gap)

    # Start with the whole budget along the gap, shared by both classes: feasible and already far from worst.
    start = np.array([power, 0.0, power, 0.0])
    bound = power / max(min(p, 1 - p), _TINY)
    # SLSQP's BLAS calls reduce in another order on another thread count, and the solve then ends elsewhere: one
    # thread keeps the noise (and every figure after it) the seed's on every machine and under every runtime.
    with threadpool_limits(limits=1):
        found = minimize(
            objective,
            start,
            method="SLSQP",
            bounds=[(0.0, bound)] * 4,
            constraints=[{"type": "ineq", "fun": lambda x: power - float(weights @ x)}],
            options={"maxiter": 200, "ftol": 1e-10},
        )
    best = found.x if found.success and objective(found.x) <= objective(start) else start
    return np.clip(best, 0.0, None)


class MarvellDefence(LabelDefence):
    """Add Marvell's class-dependent Gaussian noise to every gradient sent (binary tasks).

    Parameters
    ----------
    power_ratio : float (default: 4.0)
        Noise budget ``P`` as a multiple of the squared gap between the batch's class-mean gradients (the paper's
        scale ``s``; larger hides more and costs more accuracy).
    seed : int or None (default: None)
        Picks another noise stream under the label party's secret (:func:`fl_kd.vfl.secret.defence_seed`).
    """

    name = "marvell"
    binary_only = True

    def __init__(self, power_ratio: float = 4.0, seed: int | None = None) -> None:
        if not power_ratio >= 0:
            raise ValueError(f"power_ratio must be non-negative, got {power_ratio}")
        self.power_ratio = power_ratio
        self.seed = seed
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self._labels: Tensor | None = None
        self._last_power: float | None = None

    def setup(self, num_classes: int, embedding_dims: list[int], seed: int, secret: int | None = None) -> None:
        """Seed the noise from the label party's secret; refuse a task that is not binary."""
        if num_classes != 2:
            raise ValueError(f"marvell protects binary tasks only, this one has {num_classes} classes")
        self.generator.manual_seed(defence_seed(secret, seed, self.name, self.seed))

    def encode_batch_targets(self, sample_ids: Tensor, labels: Tensor, num_classes: int) -> Tensor:
        """One-hot targets; keeps the batch's labels, which decide each sample's noise."""
        self._labels = labels
        return super().encode_batch_targets(sample_ids, labels, num_classes)

    def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
        """``gradient + noise`` ``(B, D)``, each sample's noise drawn with its class's covariance."""
        if self._labels is None or self._labels.shape[0] != gradient.shape[0]:
            raise RuntimeError("marvell: protect_gradient must follow this batch's targets")
        if self.power_ratio == 0:
            return gradient
        grads = gradient.double()
        positive = self._labels == 1
        d = grads.shape[1]
        noise = torch.randn(grads.shape, generator=self.generator, dtype=torch.float64)
        if bool(positive.all()) or not bool(positive.any()):
            power = self._last_power if self._last_power is not None else float((grads**2).sum(dim=1).mean())
            return (grads + noise * (self.power_ratio * power / d) ** 0.5).to(gradient.dtype)
        g0, g1 = grads[~positive].mean(dim=0), grads[positive].mean(dim=0)
        gap = float(((g1 - g0) ** 2).sum())
        if gap <= 0:
            return gradient
        self._last_power = gap
        u = float(grads[~positive].var(dim=0, unbiased=False).mean()) / gap
        v = float(grads[positive].var(dim=0, unbiased=False).mean()) / gap
        p = float(positive.double().mean())
        lams = solve_covariances(u, v, d, 1.0, p, self.power_ratio) * gap
        direction = (g1 - g0) / gap**0.5
        along = (noise @ direction).unsqueeze(1) * direction
        across = noise - along
        l_along = torch.where(positive, lams[2], lams[0]).unsqueeze(1).clamp_min(0)
        l_across = torch.where(positive, lams[3], lams[1]).unsqueeze(1).clamp_min(0)
        return (grads + along * l_along.sqrt() + across * l_across.sqrt()).to(gradient.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The noise generator and the last budget: a restored label party draws the noise it would have drawn."""
        return {"generator": self.generator.get_state(), "last_power": self._last_power}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the noise generator and the last budget."""
        self.generator.set_state(state["generator"])
        self._last_power = None if state["last_power"] is None else float(state["last_power"])
