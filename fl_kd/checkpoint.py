"""Reading model checkpoints a user points to, with one clear error instead of torch's internals.

A checkpoint given in a config (``strategy.checkpoint``) may be missing, truncated, not a torch file, saved from
another architecture, or hold NaN. Each case raises :class:`CheckpointError` naming the file and what is wrong,
before any weight of a live model changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


def read_checkpoint(path: str | Path) -> Any:
    """The object stored at ``path`` (tensors only: ``weights_only=True``), or :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises EOFError, IndexError, UnpicklingError, RuntimeError...
        raise CheckpointError(f"checkpoint {path}: not a readable torch checkpoint ({type(err).__name__})") from None


def check_state_dict(model: nn.Module, state: Any, path: str | Path) -> dict[str, Tensor]:
    """``state`` checked against ``model``: same keys, same shapes, finite values; returned as a plain dict."""
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"checkpoint {path}: holds no model state_dict")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: saved from another architecture than {type(model).__name__} "
            f"({len(missing)} missing keys{_examples(missing)}, {len(unexpected)} unexpected{_examples(unexpected)})"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(value.shape)} "
                "(another architecture, dataset or number of classes)"
            )
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise CheckpointError(f"checkpoint {path}: {key} holds NaN or inf")
    return dict(state)


def _examples(keys: list[str]) -> str:
    return f", e.g. {', '.join(keys[:2])}" if keys else ""
