"""Building blocks shared by the image models: a 3x3 convolution unit and the normalisation rule.

Every image model normalises with GroupNorm (Wu & He, "Group Normalization", ECCV 2018) rather than BatchNorm.
In federated learning BatchNorm's running statistics are estimated on each client's skewed label distribution
and then reused at test time on data they do not describe (Hsieh et al., "The Non-IID Data Quagmire of
Decentralized Machine Learning", ICML 2020); the server, for its part, distils on small transfer-set batches
whose statistics are noisy. GroupNorm normalises each sample on its own, so train and eval behave alike at any
batch size, even one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_GROUPS = 8
"""Upper bound on GroupNorm groups; the models are narrow (8-128 channels), so 32 groups would be too many."""

MIN_CHANNELS_PER_GROUP = 4
"""Fewer channels per group make the per-group statistics too noisy to help."""


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with as many groups as fit ``channels``: at most 8, >= 4 channels each, dividing evenly.

    Parameters
    ----------
    channels : int
        Number of feature maps ``C`` of the ``(N, C, H, W)`` input.

    Returns
    -------
    nn.GroupNorm
        With ``C = 8 -> 2``, ``16 -> 4``, ``32 or more -> 8`` groups.
    """
    target = max(1, min(MAX_GROUPS, channels // MIN_CHANNELS_PER_GROUP))
    return nn.GroupNorm(math.gcd(channels, target), channels)


class ConvUnit(nn.Sequential):
    """``Conv3x3(padding=1) -> GroupNorm -> ReLU``: keeps ``H x W`` (at ``stride=1``) so 8x8 inputs survive.

    The convolution has no bias because the normalisation that follows would cancel it.

    Parameters
    ----------
    in_channels : int
        Input feature maps.
    out_channels : int
        Output feature maps.
    stride : int (default: 1)
        Convolution stride; 2 halves ``H`` and ``W`` (rounding up).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            group_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class _ChannelsLastMaxPool(torch.autograd.Function):
    """2x2 max pooling (ceil mode) whose forward runs on a channels-last copy of the input.

    The backward is PyTorch's own ``max_pool2d_with_indices_backward`` on the indices the forward found; those
    index each ``H x W`` plane, whatever the memory layout, so values and gradients are those of ``F.max_pool2d``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        pooled, indices = F.max_pool2d(
            x.contiguous(memory_format=torch.channels_last), 2, ceil_mode=True, return_indices=True
        )
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        return pooled.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1], True, indices
        )


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2, ceil_mode=True)`` with the same values and gradients, about twice as fast on CPU.

    Why: on the small NCHW maps of these models PyTorch's CPU max pooling took as long as the convolutions
    (a third of a knowledge-benchmark round in a profile); its channels-last kernel is about 3.5x faster forward.
    The output is contiguous NCHW like the input, so the layers after it compute exactly as before.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C, ceil(H / 2), ceil(W / 2))``."""
        if x.dim() != 4:
            return F.max_pool2d(x, 2, ceil_mode=True)
        if torch.is_grad_enabled() and x.requires_grad:
            return _ChannelsLastMaxPool.apply(x)
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, ceil_mode=True).contiguous()


def conv_stages(in_channels: int, widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    """The feature extractor of the CNN models: a :class:`ConvUnit` per width, 2x2 max-pooling between stages.

    Returns the stack and its output channels. Modules are created in stage order, so a seeded build gives the same
    initial weights wherever it is used.
    """
    stages: list[nn.Module] = []
    channels = in_channels
    for index, width in enumerate(widths):
        stages.append(ConvUnit(channels, width))
        if index < len(widths) - 1:
            stages.append(MaxPool2x2())
        channels = width
    return nn.Sequential(*stages), channels


def _grid_weights(size: int, grid: int, like: Tensor) -> Tensor:
    """``(grid, size)``: row ``i`` averages the cells ``nn.AdaptiveAvgPool2d`` gives output ``i`` (its windows)."""
    weights = torch.zeros(grid, size, dtype=like.dtype, device=like.device)
    for i in range(grid):
        start, end = (i * size) // grid, -((-(i + 1) * size) // grid)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


class GridAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(grid)`` whose backward pass reproduces on a GPU.

    Where the windows overlap (a 7x7 map onto a 3x3 grid, or a map smaller than the grid), CUDA's backward kernel adds
    each window's share into the shared input cells with atomics, in whatever order its threads finish, so two runs
    of one seed drift apart. On CUDA this pools with two fixed averaging matrices instead (matrix products reproduce
    under deterministic cuBLAS); on the CPU it is the plain layer, so CPU figures keep every bit.
    """

    def __init__(self, grid: int) -> None:
        super().__init__(grid)
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(N, C, H, W)`` to ``(N, C, grid, grid)``."""
        height, width = x.shape[-2:]
        if not x.is_cuda or (height % self.grid == 0 and width % self.grid == 0):
            return super().forward(x)  # disjoint windows: every input cell gets one gradient, no atomics race
        return matrix_grid_pool(x, self.grid)


def matrix_grid_pool(x: Tensor, grid: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, grid)`` as two matrix products (the same windows and weights, another rounding)."""
    rows, cols = _grid_weights(x.shape[-2], grid, x), _grid_weights(x.shape[-1], grid, x)
    return torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
