"""Model registry: every architecture a device tier or the server may name, built for a given input shape.

Callers control initialisation: a model's weights come from torch's global generator, so either call
``torch.manual_seed(seed)`` right before :func:`build_model` or pass ``seed=`` to build under a private,
temporarily seeded generator that leaves the global state untouched. Same seed, same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Literal

import torch
from torch import nn

from fl_kd.models.cnn import ClientCNN
from fl_kd.models.mlp import MLP
from fl_kd.models.resnet import ResNet
from fl_kd.models.wide_cnn import WideCNN

Modality = Literal["image", "tabular"]
Role = Literal["client", "server"]


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture.

    Attributes
    ----------
    name : str
        Registry key, as written in a device profile.
    modality : {"image", "tabular"}
        Input kind: images ``(C, H, W)`` or feature vectors ``(F,)``.
    role : {"client", "server"}
        Intended place in the federation; informative only, any model may take either role.
    factory : Callable[[tuple[int, ...], int], nn.Module]
        Builds the model from a validated ``input_shape`` and ``num_classes``.
    description : str
        One line for reports and error messages.
    """

    name: str
    modality: Modality
    role: Role
    factory: Callable[[tuple[int, ...], int], nn.Module]
    description: str


_REGISTRY: dict[str, ModelSpec] = {}

_INPUT_RANK: dict[Modality, int] = {"image": 3, "tabular": 1}
_SHAPE_NAME: dict[Modality, str] = {"image": "(C, H, W)", "tabular": "(F,)"}


def register_model(spec: ModelSpec) -> None:
    """Add ``spec`` to the registry; a name may be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.modality not in _INPUT_RANK:
        raise ValueError(f"model {spec.name!r}: modality must be 'image' or 'tabular', got {spec.modality!r}")
    _REGISTRY[spec.name] = spec


def available_models(modality: Modality | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only those for ``modality``."""
    return sorted(name for name, spec in _REGISTRY.items() if modality is None or spec.modality == modality)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(available_models())
        raise ValueError(f"unknown model {name!r}; available models: {known}") from None


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build the registered model ``name`` for inputs ``(N, *input_shape)`` and logits ``(N, num_classes)``.

    Parameters
    ----------
    name : str
        A name from :func:`available_models`.
    input_shape : Sequence[int]
        One sample's shape: ``(C, H, W)`` for image models, ``(F,)`` for tabular ones.
    num_classes : int
        Number of output logits, >= 1.
    seed : int | None (default: None)
        If given, initialise from a generator seeded with it without touching torch's global state; if
        ``None``, draw from the global generator (seed it with ``torch.manual_seed`` first for reproducible
        weights).

    Returns
    -------
    nn.Module
        A freshly initialised model in training mode.

    Raises
    ------
    ValueError
        Unknown name, a shape of the wrong kind (image model on tabular data or vice versa), non-positive
        dimensions, or ``num_classes < 1``.
    """
    spec = get_model_spec(name)
    shape = _check_input_shape(spec, input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if seed is None:
        return spec.factory(shape, int(num_classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.factory(shape, int(num_classes))


def check_input_shape(name: str, input_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` where model ``name`` cannot take inputs of ``input_shape``: the check of
    :func:`build_model`, made before anything is built (a config's models against the dataset it loaded)."""
    _check_input_shape(get_model_spec(name), input_shape)


def _check_input_shape(spec: ModelSpec, input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if any(isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1 for dim in shape):
        raise ValueError(f"input_shape must hold positive ints, got {shape!r}")
    if len(shape) != _INPUT_RANK[spec.modality]:
        other: Modality = "tabular" if spec.modality == "image" else "image"
        hint = ""
        if len(shape) == _INPUT_RANK[other]:
            hint = f", which is a {other} shape: use one of {', '.join(available_models(other))}"
        raise ValueError(
            f"model {spec.name!r} is for {spec.modality} data and expects input_shape "
            f"{_SHAPE_NAME[spec.modality]}, got {shape!r}{hint}"
        )
    return tuple(int(dim) for dim in shape)


def _cnn(widths: tuple[int, ...], head_grid: int) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda shape, num_classes: ClientCNN(shape[0], num_classes, widths, head_grid)


def _mlp(hidden: tuple[int, ...]) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda shape, num_classes: MLP(shape[0], num_classes, hidden)


# Client tiers grow 3-4x in parameters per step; each server is >= 10x the largest client of its family.
for _spec in (
    ModelSpec("cnn_tiny", "image", "client", _cnn((8, 16), 2), "2-stage CNN, 8/16, 2x2 head"),
    ModelSpec("cnn_small", "image", "client", _cnn((16, 32), 2), "2-stage CNN, 16/32, 2x2 head"),
    ModelSpec("cnn_medium", "image", "client", _cnn((16, 32, 64), 1), "3-stage CNN, 16/32/64, 1x1 head"),
    ModelSpec(
        "resnet_server",
        "image",
        "server",
        lambda shape, num_classes: ResNet(shape[0], num_classes, input_size=(shape[1], shape[2])),
        "ResNet-10-style, basic blocks 16/32/64/128, GroupNorm",
    ),
    ModelSpec(
        "cnn_server",
        "image",
        "server",
        lambda shape, num_classes: WideCNN(shape[0], num_classes),
        "wide 3-stage CNN, 32/64/128, 3x3 grid, hidden 256, dropout 0.25",
    ),
    ModelSpec("mlp_tiny", "tabular", "client", _mlp((16,)), "MLP, hidden 16"),
    ModelSpec("mlp_small", "tabular", "client", _mlp((32, 32)), "MLP, hidden 32/32"),
    ModelSpec("mlp_medium", "tabular", "client", _mlp((64, 64)), "MLP, hidden 64/64"),
    ModelSpec("mlp_server", "tabular", "server", _mlp((256, 256, 256)), "MLP, hidden 256/256/256"),
):
    register_model(_spec)
