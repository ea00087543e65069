"""Small bottom and top models for split (vertical) training.

A feature party's *bottom model* maps its feature columns to an embedding; the label party's *top model* maps
the embeddings of all parties to class logits. Two tops are offered, following the two settings of the VFLAIR
benchmark (Zou et al., "VFLAIR: A Research Library and Benchmark for Vertical Federated Learning", ICLR 2024):

* ``MLPTop`` — a trainable head over the concatenated embeddings;
* ``SumTop`` — a non-trainable top that adds the parties' logits. The gradient a party receives is then
  ``(softmax - target) / B``, which is what the direct label inference attack reads the label from.

All weights are initialised from an explicit ``torch.Generator`` so that a seed alone fixes a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fl_kd.registry import Registry


def init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """Re-initialise ``layer`` like PyTorch's default, but from ``generator`` instead of the global RNG.

    PyTorch's default (Kaiming-uniform with ``a = sqrt(5)``) reduces to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    for both weight and bias; drawing it from a private generator keeps model construction reproducible
    without touching global random state.
    """
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        if layer.bias is not None:
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def _mlp(sizes: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers with ReLU in between (none after the last), initialised from ``generator``."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        init_linear_(linear, generator)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BottomMLP(nn.Module):
    """A party's bottom model: features ``(B, F)`` -> embedding ``(B, D)``.

    Parameters
    ----------
    in_features : int
        Number of feature columns the party holds (``F``).
    embedding_dim : int
        Size of the embedding sent to the label party (``D``).
    hidden : Sequence[int] (default: (64,))
        Hidden layer widths; empty gives a linear bottom model.
    seed : int (default: 0)
        Seed of the weight initialisation.
    """

    def __init__(self, in_features: int, embedding_dim: int, hidden: Sequence[int] = (64,), seed: int = 0) -> None:
        super().__init__()
        if in_features <= 0 or embedding_dim <= 0:
            raise ValueError(f"in_features and embedding_dim must be positive, got {in_features} and {embedding_dim}")
        self.in_features = in_features
        self.embedding_dim = embedding_dim
        generator = torch.Generator().manual_seed(seed)
        self.layers = _mlp([in_features, *hidden, embedding_dim], generator)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape ``(B, F)`` (any trailing shape is flattened) into ``(B, D)``."""
        return self.layers(x.flatten(start_dim=1))


class MLPTop(nn.Module):
    """Trainable top model: concatenated embeddings ``(B, sum D_k)`` -> logits ``(B, C)``.

    Parameters
    ----------
    input_dims : Sequence[int]
        Embedding size of each party, in the order the embeddings are passed.
    num_classes : int
        Number of classes ``C``.
    hidden : Sequence[int] (default: ())
        Hidden widths; empty gives a single linear layer as in VFLAIR's trainable head.
    seed : int (default: 0)
        Seed of the weight initialisation.
    """

    def __init__(self, input_dims: Sequence[int], num_classes: int, hidden: Sequence[int] = (), seed: int = 0) -> None:
        super().__init__()
        _check_top_args(input_dims, num_classes)
        self.input_dims = list(input_dims)
        self.num_classes = num_classes
        generator = torch.Generator().manual_seed(seed)
        self.layers = _mlp([sum(input_dims), *hidden, num_classes], generator)

    def forward(self, embeddings: Sequence[Tensor]) -> Tensor:
        """Logits ``(B, C)`` from one embedding ``(B, D_k)`` per party."""
        return self.layers(torch.cat(list(embeddings), dim=1))


class SumTop(nn.Module):
    """Non-trainable top model: the sum of the parties' logits, each ``(B, C)``.

    Every bottom model must then output ``C`` values. With cross entropy on ``softmax(sum_k h_k)``, the
    gradient w.r.t. each ``h_k`` equals ``(softmax - target) / B`` for a batch-mean loss.
    """

    def __init__(self, input_dims: Sequence[int], num_classes: int) -> None:
        super().__init__()
        _check_top_args(input_dims, num_classes)
        if any(dim != num_classes for dim in input_dims):
            raise ValueError(
                f"a sum top needs every embedding to have num_classes={num_classes} entries, got {list(input_dims)}"
            )
        self.input_dims = list(input_dims)
        self.num_classes = num_classes

    def forward(self, embeddings: Sequence[Tensor]) -> Tensor:
        """Logits ``(B, C)``: the element-wise sum of the party logits."""
        return torch.stack(list(embeddings), dim=0).sum(dim=0)


def _check_top_args(input_dims: Sequence[int], num_classes: int) -> None:
    if len(input_dims) == 0 or any(dim <= 0 for dim in input_dims):
        raise ValueError(f"input_dims must be a non-empty list of positive sizes, got {list(input_dims)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


TopModelFactory = Callable[[Sequence[int], int, Sequence[int], int], "MLPTop | SumTop"]

#: Top models of the label party, by config name (``vfl_model.top``): ``mlp`` is trainable, ``sum`` is not.
TOP_MODELS: Registry[TopModelFactory] = Registry("top model")
TOP_MODELS.add("mlp", lambda dims, classes, hidden, seed: MLPTop(dims, classes, hidden=hidden, seed=seed))
TOP_MODELS.add("sum", lambda dims, classes, hidden, seed: SumTop(dims, classes))


def available_top_models() -> tuple[str, ...]:
    """Names accepted by :func:`build_top_model`."""
    return TOP_MODELS.names()


def build_top_model(
    kind: str, input_dims: Sequence[int], num_classes: int, hidden: Sequence[int] = (), seed: int = 0
) -> MLPTop | SumTop:
    """Build a top model by registered name: ``"mlp"`` (trainable) or ``"sum"`` (non-trainable)."""
    return TOP_MODELS.get(kind)(input_dims, num_classes, hidden, seed)
