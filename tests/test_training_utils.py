"""The shared mini-batching: every sample exactly once, never a batch of one."""

from __future__ import annotations

import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.kd.training import DivergedError, check_loss, minibatches


@pytest.mark.parametrize(("num_samples", "batch_size"), [(65, 64), (129, 64), (10, 3), (64, 64), (1, 8), (2, 1)])
def test_every_sample_once_and_no_single_sample_batch_unless_alone(num_samples: int, batch_size: int) -> None:
    batches = minibatches(num_samples, batch_size, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(num_samples))
    assert all(batch.numel() > 1 for batch in batches) or num_samples == 1 or batch_size == 1
    # 129 = 64 + 64 + 1: the single sample joins the second batch; the first stays as it was.
    if (num_samples, batch_size) == (129, 64):
        assert [b.numel() for b in batches] == [64, 65]


def test_predictions_carry_no_autograd_graph() -> None:
    """Logits are read as data (``.numpy()``, wire arrays): predicting must not build a graph."""
    from torch import nn

    from fl_kd.kd.training import predict_logits

    logits = predict_logits(nn.Linear(3, 2), torch.zeros(4, 3))
    assert not logits.requires_grad
    logits.numpy()


def test_a_non_finite_loss_is_a_diverged_error_naming_the_setting() -> None:
    check_loss(torch.tensor(2.5), "the server model", "strategy.server_lr")  # finite: nothing happens
    for value in (float("nan"), float("inf")):
        with pytest.raises(DivergedError, match=r"^the server model diverged: .* Lower strategy\.server_lr$"):
            check_loss(torch.tensor(value), "the server model", "strategy.server_lr")
    assert issubclass(DivergedError, ConfigError)  # a user's setting to change: one line and exit code 2
