"""Small plain CNNs for edge clients (tiers ``cnn_tiny``, ``cnn_small``, ``cnn_medium``).

Clients in heterogeneous knowledge distillation (e.g. FedMD, Li & Wang 2019; FedGEMS, Cheng et al. 2021) each
train whatever model their device affords; only logits leave the device, so the tiers below share nothing but
the input and output shapes. Each stage is a :class:`~fl_kd.models.layers.ConvUnit` followed by 2x2 max
pooling, and the head averages the last feature maps onto a small ``head_grid x head_grid`` grid before one
linear layer, so any ``H x W`` (down to 1x1) maps to ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fl_kd.models.layers import GridAvgPool, conv_stages


class ClientCNN(nn.Module):
    """Plain CNN: stages of ``ConvUnit -> MaxPool2x2``, then grid average pooling and a linear head.

    Pooling uses ``ceil_mode`` so odd and tiny maps (7x7, 1x1) shrink by rounding up instead of vanishing; the
    last stage skips max pooling because the head pools.

    Why a grid: after two stages a unit sees only ~10x10 pixels, so global average pooling would discard
    *where* strokes are, and on 8x8 digits a 2-stage CNN with a 1x1 head learns far slower (about 0.5 vs 0.93
    accuracy after 100 steps on 150 samples). A 2x2 grid keeps coarse position. Deeper models whose last stage
    sees the whole image use ``head_grid=1`` (global average pooling), which also keeps the head small when
    there are 100 classes.

    Parameters
    ----------
    in_channels : int
        ``C`` of the ``(N, C, H, W)`` input.
    num_classes : int
        Width of the output logits.
    widths : Sequence[int]
        Feature maps per stage, e.g. ``(16, 32)``.
    head_grid : int (default: 1)
        The last feature maps are average-pooled to ``head_grid x head_grid``; the head has
        ``widths[-1] * head_grid**2`` inputs. Inputs smaller than the grid are upsampled by repetition.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], head_grid: int = 1) -> None:
        super().__init__()
        if not widths:
            raise ValueError("ClientCNN needs at least one stage width")
        self.features, channels = conv_stages(in_channels, widths)
        self.pool = GridAvgPool(head_grid)
        self.classifier = nn.Linear(channels * head_grid * head_grid, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        logits: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))
        return logits
