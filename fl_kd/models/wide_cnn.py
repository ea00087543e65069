"""Wide CNN server model (``cnn_server``) for small images such as 28x28 Fashion-MNIST.

A VGG-style stack (Simonyan & Zisserman, ICLR 2015) cut to three stages of one 3x3 convolution each, widths
32/64/128 with 2x2 max pooling between them, then the feature maps average-pooled onto a 3x3 grid and a hidden
fully connected layer of 256 units with dropout before the logits. Most of its ~0.39 M parameters (over 15x the
largest client CNN) sit in the fully connected head, which is cheap to run: about 7.7 M multiply-adds per 28x28
image against about 26 M for ``resnet_server``, so an epoch of Fashion-MNIST fits a small CPU budget. Plain CNNs
of this shape are the usual strong small baselines on Fashion-MNIST (0.91-0.93 test accuracy).

Like every image model here it normalises with GroupNorm (see :mod:`fl_kd.models.layers`), and the grid head
upsamples by repetition when the maps are smaller than the grid, so 8x8 digits work too.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fl_kd.models.layers import GridAvgPool, conv_stages


class WideCNN(nn.Module):
    """Stages of ``ConvUnit -> MaxPool2x2`` (no pooling after the last), grid pooling, an MLP head.

    Parameters
    ----------
    in_channels : int
        ``C`` of the ``(N, C, H, W)`` input.
    num_classes : int
        Width of the output logits.
    widths : Sequence[int] (default: (32, 64, 128))
        Feature maps per stage.
    head_grid : int (default: 3)
        The last feature maps are average-pooled to ``head_grid x head_grid``.
    hidden : int (default: 256)
        Units of the hidden fully connected layer.
    dropout : float (default: 0.25)
        Dropout before the hidden and the output layer, in training mode only.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        head_grid: int = 3,
        hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if not widths or hidden < 1:
            raise ValueError("WideCNN needs at least one stage width and a positive hidden size")
        self.features, channels = conv_stages(in_channels, widths)
        self.pool = GridAvgPool(head_grid)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(channels * head_grid * head_grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        logits: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))
        return logits
