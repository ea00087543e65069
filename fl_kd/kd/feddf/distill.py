"""FedDF's server-side steps: the ensemble's averaged logits, and distilling them into a model (no labels).

Lin et al. (NeurIPS 2020) fuse models by distilling the ensemble of the received client models into each
architecture's averaged model on unlabelled data, with Adam and the KL divergence between the ensemble's and the
student's softened outputs; the ensemble output is the mean of the members' logits ("AvgLogits").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fl_kd.kd.losses import kd_loss
from fl_kd.kd.seeding import derive_seed, seeded_torch, torch_generator
from fl_kd.kd.training import check_loss, minibatches, predict_logits


def ensemble_logits(models: Iterable[nn.Module], x: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Mean of the models' eval-mode logits on ``x``: ``(N, C)`` float32 on CPU, summed in the given order."""
    total: Tensor | None = None
    count = 0
    for model in models:
        logits = predict_logits(model, x, device=device)
        total = logits if total is None else total + logits
        count += 1
    if total is None:
        raise ValueError("an ensemble needs at least one model")
    return total / count


def distill_into(
    model: nn.Module,
    x: Tensor,
    teacher_logits: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> float:
    """Train ``model`` for ``epochs`` of ``KD(teacher -> model)`` on inputs ``x`` ``(N, ...)`` with Adam.

    ``teacher_logits`` is ``(N, C)``. Shuffling and dropout are drawn from ``seed`` (the caller's
    ``(seed, SERVER_ID, round, phase)`` stream). Returns the final epoch's mean loss (0.0 for no epochs).
    """
    if teacher_logits.shape[0] != x.shape[0]:
        raise ValueError(f"teacher logits cover {teacher_logits.shape[0]} inputs, not {x.shape[0]}")
    if epochs == 0:
        return 0.0
    generator = torch_generator(derive_seed(seed, "shuffle"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss_sum = 0.0
    with seeded_torch(derive_seed(seed, "rng"), device):
        for _ in range(epochs):
            loss_sum = 0.0
            for index in minibatches(x.shape[0], batch_size, generator):
                loss = kd_loss(model(x[index].to(device)), teacher_logits[index].to(device), temperature)
                check_loss(loss, "a distilled model", "strategy.distill_lr or strategy.server_lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * index.numel()
    return loss_sum / x.shape[0]
