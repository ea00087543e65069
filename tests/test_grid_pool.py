"""The grid pooling the image models use on a GPU is the adaptive average pooling's windows and weights exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fl_kd.models import build_model
from fl_kd.models.layers import GridAvgPool, matrix_grid_pool


@pytest.mark.parametrize(("size", "grid"), [(7, 3), (2, 3), (8, 3), (14, 2), (5, 1), (1, 3)])
def test_matrix_pooling_matches_adaptive_pooling_forward_and_backward(size: int, grid: int) -> None:
    x = torch.randn(2, 3, size, size + 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = F.adaptive_avg_pool2d(a, grid), matrix_grid_pool(b, grid)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-12)
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    got.backward(upstream)
    assert b.grad is not None and a.grad is not None and torch.allclose(b.grad, a.grad, atol=1e-12)


def test_on_the_cpu_the_models_pool_as_before_bit_for_bit() -> None:
    """CPU figures (every table) keep their bits: the layer is the plain adaptive pooling there."""
    x = torch.randn(4, 128, 7, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(GridAvgPool(3)(x), F.adaptive_avg_pool2d(x, 3))
    model = build_model("cnn_server", (1, 28, 28), 10, seed=0)
    assert isinstance(model.pool, GridAvgPool) and list(model.state_dict()) == [
        key for key in model.state_dict() if not key.startswith("pool")
    ]
