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

from torch import nn

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
            stages.append(nn.MaxPool2d(kernel_size=2, ceil_mode=True))
        channels = width
    return nn.Sequential(*stages), channels
