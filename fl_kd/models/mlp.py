"""Multilayer perceptrons for tabular data (tiers ``mlp_tiny`` .. ``mlp_medium`` and ``mlp_server``).

Tabular features arrive standardised (see :mod:`fl_kd.data`), so plain ``Linear -> ReLU`` layers train well
without normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """``Linear -> ReLU`` per hidden width, then a linear head.

    Parameters
    ----------
    in_features : int
        ``F`` of the ``(N, F)`` input.
    num_classes : int
        Width of the output logits.
    hidden : Sequence[int]
        Hidden widths, e.g. ``(64, 64)``; empty gives multinomial logistic regression.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True)]
            width = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map features ``(N, F)`` to logits ``(N, num_classes)``."""
        logits: Tensor = self.classifier(self.features(x))
        return logits
