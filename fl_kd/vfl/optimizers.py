"""Optimisers of the parties' models, by config name (``training.optimizer``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fl_kd.registry import Registry

OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]

#: Optimisers every party may use, by config name (``training.optimizer``).
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda params, lr: torch.optim.SGD(params, lr=lr))
OPTIMIZERS.add("adam", lambda params, lr: torch.optim.Adam(params, lr=lr))


def available_optimizers() -> tuple[str, ...]:
    """Names accepted by :func:`make_optimizer`."""
    return OPTIMIZERS.names()


def make_optimizer(params: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer | None:
    """An optimiser over ``params`` (``None`` when there is nothing to train, e.g. a sum top alone)."""
    factory = OPTIMIZERS.get(name)
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not params:
        return None
    return factory(params, lr)
