"""ResNet-style server model (``resnet_server``) for images.

Residual networks with basic blocks follow He et al., "Deep Residual Learning for Image Recognition", CVPR
2016. The layout is ResNet-18's four stages of doubling width, at a quarter of its width and with one basic
block per stage (a ResNet-10): widths 16/32/64/128, about 0.31 M parameters, over 10x the largest client CNN.
Most parameters sit in the last, lowest-resolution stage, where they are cheap to run: forward and backward on
a batch of 64 digits (1x8x8) take about 27 ms of CPU time on one thread, against about 34 ms for a
3-stage 32/64/128 ResNet-8 of the same size (and 123 vs 318 ms on 28x28 inputs). The server distils on small
transfer-set batches, hence GroupNorm (see :mod:`fl_kd.models.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from fl_kd.models.layers import ConvUnit, group_norm


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

    Parameters
    ----------
    in_channels : int
        Input feature maps.
    out_channels : int
        Output feature maps.
    stride : int (default: 1)
        Stride of the first convolution and of the projection; 2 halves ``H`` and ``W`` (rounding up).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                group_norm(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride))``."""
        out: Tensor = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out = self.relu(out + self.shortcut(x))
        return out


class ResNet(nn.Module):
    """Stem ``ConvUnit``, a stage of basic blocks per width, global average pooling and a linear head.

    Each stage after the first starts with a stride-2 block, except that when ``input_size`` is known a stage
    stops halving once the maps would shrink below ``min_feature_size``. Why: on 8x8 digits a fourth halving
    would leave 1x1 maps, where a padded 3x3 kernel only ever uses its centre tap, so 8/9 of the widest
    stage's weights would never learn. Keeping that stage at 2x2 makes every weight count, and for 28x28 or
    32x32 inputs the usual halving (down to 4x4) is unchanged. Stride-2 convolutions with padding 1 round up,
    so any ``H x W`` works.

    Parameters
    ----------
    in_channels : int
        ``C`` of the ``(N, C, H, W)`` input.
    num_classes : int
        Width of the output logits.
    widths : Sequence[int] (default: (16, 32, 64, 128))
        Feature maps per stage; the stem uses the first.
    blocks_per_stage : int (default: 1)
        Basic blocks per stage.
    input_size : tuple[int, int] | None (default: None)
        ``(H, W)`` of the inputs the model is built for; ``None`` halves at every stage.
    min_feature_size : int (default: 2)
        Smallest side length a stride-2 stage may produce when ``input_size`` is given.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks_per_stage: int = 1,
        input_size: tuple[int, int] | None = None,
        min_feature_size: int = 2,
    ) -> None:
        super().__init__()
        if not widths or blocks_per_stage < 1:
            raise ValueError("ResNet needs at least one stage and one block per stage")
        self.stem = ConvUnit(in_channels, widths[0])
        blocks: list[nn.Module] = []
        channels = widths[0]
        side = min(input_size) if input_size is not None else None
        for stage, width in enumerate(widths):
            stride = 1
            if stage > 0 and (side is None or math.ceil(side / 2) >= min_feature_size):
                stride = 2
                side = None if side is None else math.ceil(side / 2)
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if block == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init suits ReLU; zeroing each block's last norm scale starts every block as the identity, which
        # keeps early distillation steps stable (Goyal et al., 2017).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        logits: Tensor = self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))
        return logits
