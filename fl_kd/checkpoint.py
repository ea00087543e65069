"""Reading model checkpoints a user points to, with one clear error instead of torch's internals; and the whole
state of a live object (:func:`object_state`), which a resumed run restores into a freshly built one.

A checkpoint given in a config (``strategy.checkpoint``) may be missing, truncated, not a torch file, saved from
another architecture, or hold NaN. Each case raises :class:`CheckpointError` naming the file and what is wrong,
before any weight of a live model changes.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


def read_checkpoint(path: str | Path) -> Any:
    """The object stored at ``path`` (tensors only: ``weights_only=True``), or :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
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
        saved = state[key]
        if (
            saved.layout != torch.strided
            or saved.is_complex()
            or saved.is_floating_point() != value.is_floating_point()
        ):
            # a sparse tensor failed the finiteness check below with a traceback; integer weights loaded silently
            raise CheckpointError(
                f"checkpoint {path}: {key} is a {saved.layout} tensor of {saved.dtype}, the model needs a dense one of "
                f"{value.dtype}"
            )
        if tuple(saved.shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(saved.shape)}, the model needs {tuple(value.shape)} "
                "(another architecture, dataset or number of classes)"
            )
        if saved.is_floating_point() and not torch.isfinite(saved).all():
            raise CheckpointError(f"checkpoint {path}: {key} holds NaN or inf")
    return dict(state)


def _examples(keys: list[str]) -> str:
    return f", e.g. {', '.join(keys[:2])}" if keys else ""


# -- the whole state of a live object (a server half), for resuming a run -------------------------------------------

#: Types whose values are settings, not state: kept as they are built, only checked to be the same on restore.
_CONSTANTS: tuple[type, ...] = (torch.device, torch.dtype, np.dtype, Path, enum.Enum, range, slice)
_SCALARS: tuple[type, ...] = (bool, int, float, complex, str, bytes, type(None))
_CALLABLES: tuple[type, ...] = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    functools.partial,
    type,
    types.ModuleType,
)
_MISSING = object()


def object_state(obj: Any, baseline: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything ``obj`` holds, as plain tensors, numbers and containers that ``torch.save`` writes and
    ``torch.load(weights_only=True)`` reads back (no pickled classes).

    Why generic: every KD algorithm's server half is a tree of models, arrays, caches and settings, and a resumed
    run must continue from all of it, not from what one algorithm's ``save`` chose to keep. The walk follows
    attributes, dicts, lists and tuples; models go by ``state_dict`` (and train/eval mode), optimizers and random
    generators by their states. Callables are skipped (they are rebuilt with the object); settings such as devices
    and dtypes are only compared. An array, tensor or model whose digest equals ``baseline``'s for its path (the
    freshly built object's, :func:`state_digests`) is written as that digest only, so the read-only data an object
    holds (transfer sets) is not copied every round but checked when restored.

    Raises
    ------
    CheckpointError
        ``obj`` holds something of a type this walk cannot write (the message names its path and type).
    """
    return {"format": 1, "root": _encode(obj, "root", {}, baseline or {}, {})}


def state_digests(obj: Any) -> dict[str, str]:
    """Path -> digest of every array, tensor and model in ``obj`` (the ``baseline`` of :func:`object_state`)."""
    digests: dict[str, str] = {}
    _encode(obj, "root", {}, {}, digests)
    return digests


def restore_object_state(obj: Any, state: Mapping[str, Any], source: str | Path) -> None:
    """Load :func:`object_state`'s ``state`` into ``obj``, a freshly built object of the same kind, in place.

    Models, optimizers, tensors and arrays of the same shape are overwritten in place (other references to them
    see the restored values). ``source`` names the file in errors. An object with a ``check_restored_state()``
    method has it called once its attributes are restored; a ``ValueError`` from it is a :class:`CheckpointError`.

    Raises
    ------
    CheckpointError
        The state does not fit ``obj``: another structure, type or setting, or data that differs from the saved
        run's (a ``baseline`` digest that ``obj``'s value no longer has).
    """
    if not isinstance(state, Mapping) or state.get("format") != 1 or "root" not in state:
        raise CheckpointError(f"checkpoint {source}: not a saved object state")
    try:
        _restore(obj, state["root"], "root")
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {source}: {err}") from None
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {source}: unusable saved state ({type(err).__name__}: {err})") from None


def content_digest(value: Tensor | np.ndarray | nn.Module | Mapping[str, Tensor]) -> str:
    """A digest of the values (with names, dtypes and shapes) of an array, a tensor, a model or named tensors."""
    hasher = hashlib.blake2b(digest_size=16)
    if isinstance(value, nn.Module):
        items = list(value.state_dict().items())
    elif isinstance(value, Mapping):
        items = sorted(value.items())
    else:
        items = [("", value)]
    for name, item in items:
        array = item.detach().cpu().contiguous() if isinstance(item, Tensor) else np.ascontiguousarray(item)
        hasher.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        if isinstance(array, Tensor):
            hasher.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            hasher.update(array.tobytes())
    return hasher.hexdigest()


def _array_leaf(value: Any, path: str, baseline: Mapping[str, str], digests: dict[str, str]) -> dict[str, Any]:
    digest = content_digest(value)
    digests[path] = digest
    if baseline.get(path) == digest:
        return {"t": "same", "digest": digest}
    if isinstance(value, nn.Module):
        state = {name: item.detach().cpu().clone() for name, item in value.state_dict().items()}
        return {"t": "module", "v": state, "training": [module.training for module in value.modules()]}
    if isinstance(value, Tensor):
        return {"t": "tensor", "v": value.detach().cpu().clone()}
    if value.dtype.hasobject:
        raise CheckpointError(f"{path}: an object array cannot be saved without pickle")
    raw = torch.tensor(np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=np.uint8))
    return {"t": "ndarray", "bytes": raw, "dtype": value.dtype.str, "shape": list(value.shape)}


def _encode(value: Any, path: str, seen: dict[int, str], baseline: Mapping[str, str], digests: dict[str, str]) -> Any:
    if isinstance(value, _SCALARS):
        return {"t": "v", "v": value}
    if isinstance(value, np.generic):
        return {"t": "np_scalar", "v": value.item(), "dtype": value.dtype.str}
    if isinstance(value, _CONSTANTS):
        return {"t": "const", "repr": repr(value)}
    if isinstance(value, _CALLABLES):
        return {"t": "skip"}
    if id(value) in seen:  # shared: restored once, through the first path it was met on
        return {"t": "alias", "path": seen[id(value)]}
    seen[id(value)] = path
    if isinstance(value, (nn.Module, Tensor, np.ndarray)):
        return _array_leaf(value, path, baseline, digests)
    if isinstance(value, torch.optim.Optimizer):
        return {"t": "optimizer", "v": value.state_dict()}
    if isinstance(value, torch.Generator):
        return {"t": "torch_generator", "v": value.get_state()}
    if isinstance(value, np.random.Generator):
        return {"t": "numpy_generator", "v": value.bit_generator.state}
    if isinstance(value, dict):
        if not all(isinstance(key, _SCALARS) for key in value):
            raise CheckpointError(f"{path}: a dict with keys other than numbers and strings cannot be saved")
        items = [[key, _encode(item, f"{path}[{key!r}]", seen, baseline, digests)] for key, item in value.items()]
        return {"t": "dict", "items": items}
    if isinstance(value, (list, tuple)):
        items = [_encode(item, f"{path}[{i}]", seen, baseline, digests) for i, item in enumerate(value)]
        return {"t": type(value).__name__ if type(value) in (list, tuple) else "tuple", "items": items}
    if isinstance(value, (set, frozenset)) and all(isinstance(item, _SCALARS) for item in value):
        return {"t": type(value).__name__, "items": sorted(value, key=repr)}
    if hasattr(value, "__dict__") and not any(vars(cls).get("__slots__") for cls in type(value).__mro__):
        attrs = {name: _encode(item, f"{path}.{name}", seen, baseline, digests) for name, item in vars(value).items()}
        return {"t": "object", "type": type(value).__qualname__, "attrs": attrs}
    raise CheckpointError(f"{path}: a {type(value).__qualname__} cannot be saved")


def _restore(current: Any, saved: Mapping[str, Any], path: str) -> Any:
    """The value ``path`` must hold after the restore: ``current`` updated in place where possible."""
    kind = saved["t"]
    if kind == "v":
        _check_same_kind(current, saved["v"], path)
        return saved["v"]
    if kind == "np_scalar":
        return np.dtype(saved["dtype"]).type(saved["v"])
    if kind in ("skip", "alias"):
        return current
    if kind == "const":
        if current is _MISSING or repr(current) != saved["repr"]:
            raise CheckpointError(f"{path} was {saved['repr']}, the rebuilt object has {current!r} (another setting)")
        return current
    if kind == "same":
        if current is _MISSING or content_digest(current) != saved["digest"]:
            raise CheckpointError(f"{path} differs from the saved run's (another dataset or setting)")
        return current
    if kind == "tensor":
        value = saved["v"]
        if isinstance(current, Tensor) and current.dtype != value.dtype:  # a shape may grow over a run, a dtype not
            raise CheckpointError(f"{path} was a {value.dtype} tensor, the rebuilt object has a {current.dtype} one")
        if isinstance(current, Tensor) and current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)
            return current
        return value.to(current.device) if isinstance(current, Tensor) else value
    if kind == "ndarray":
        raw = saved["bytes"].numpy().tobytes()
        value = np.frombuffer(raw, dtype=np.dtype(saved["dtype"])).reshape(saved["shape"]).copy()
        if isinstance(current, np.ndarray) and current.dtype != value.dtype:
            raise CheckpointError(f"{path} was a {value.dtype} array, the rebuilt object has a {current.dtype} one")
        if isinstance(current, np.ndarray) and current.shape == value.shape:
            if current.flags.writeable:
                current[...] = value
                return current
        return value
    if kind in ("module", "optimizer", "torch_generator", "numpy_generator", "object"):
        return _restore_in_place(current, saved, path)
    if kind == "dict":
        old = current if isinstance(current, dict) else {}
        restored = {key: _restore(old.get(key, _MISSING), item, f"{path}[{key!r}]") for key, item in saved["items"]}
        if not isinstance(current, dict):
            return restored
        current.clear()
        current.update(restored)
        return current
    if kind in ("list", "tuple"):
        previous = list(current) if isinstance(current, (list, tuple)) else []
        items = [
            _restore(previous[i] if i < len(previous) else _MISSING, item, f"{path}[{i}]")
            for i, item in enumerate(saved["items"])
        ]
        if kind == "list" and isinstance(current, list):
            current[:] = items
            return current
        return items if kind == "list" else tuple(items)
    if kind in ("set", "frozenset"):
        return (set if kind == "set" else frozenset)(saved["items"])
    raise CheckpointError(f"{path}: unknown saved kind {kind!r}")


def _scalar_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "a truth value"
    numbers = (int, float, np.integer, np.floating)
    return "a number" if isinstance(value, numbers) else f"a {type(value).__name__}"


def _check_same_kind(current: Any, saved: Any, path: str) -> None:
    """A saved plain value must be of the rebuilt one's kind (``None`` either side passes: optional state fills in).

    Ints and floats are one kind: a counter may be saved as either. A string where the rebuilt object counts is a
    checkpoint of another version, and resuming from it would fail later, far from the cause.
    """
    if current is _MISSING or current is None or saved is None:
        return
    if _scalar_kind(current) != _scalar_kind(saved):
        raise CheckpointError(f"{path} was {_scalar_kind(saved)} ({saved!r}), the rebuilt object has {current!r}")


def _restore_in_place(current: Any, saved: Mapping[str, Any], path: str) -> Any:
    """Models, optimizers, generators and objects cannot be made from saved values: the rebuilt one is loaded."""
    kind = saved["t"]
    if current is _MISSING:
        raise CheckpointError(f"{path}: the saved run had a {kind} here, the rebuilt object has none")
    if kind == "module":
        broken = [name for name, t in saved["v"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if broken:  # a model that diverged, or a damaged file: resuming would carry it on without a word
            raise CheckpointError(f"{path}: saved weights {broken[:3]} hold NaN or inf")
        current.load_state_dict(saved["v"])
        for module, training in zip(current.modules(), saved["training"], strict=True):
            module.training = training
    elif kind == "optimizer":
        current.load_state_dict(saved["v"])
    elif kind == "torch_generator":
        current.set_state(saved["v"])
    elif kind == "numpy_generator":
        current.bit_generator.state = saved["v"]
    else:
        rebuilt = type(current).__qualname__
        if rebuilt != saved["type"]:
            raise CheckpointError(f"{path} was a {saved['type']}, the rebuilt object has a {rebuilt}")
        attrs = vars(current)
        for name in [name for name in attrs if name not in saved["attrs"]]:
            del attrs[name]
        for name, item in saved["attrs"].items():
            attrs[name] = _restore(attrs.get(name, _MISSING), item, f"{path}.{name}")
        check = getattr(current, "check_restored_state", None)
        if callable(check):  # the object's own invariants, which a walk over plain values cannot know
            try:
                check()
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}") from None
    return current
