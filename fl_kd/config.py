"""One source for every setting: core dataclasses are the schema, and plain mappings are checked against them.

Every experiment setting is a field of a core dataclass (``fl_kd.data.DatasetConfig``,
``fl_kd.kd.config.ExperimentConfig``, ``fl_kd.vfl.config.VFLRunConfig``, ...), declared once with its type, its
default and a docstring. The Hydra layer derives its config groups from these classes and hands the composed
config back as a plain mapping; :func:`from_mapping` is then the one place where keys, types and values are checked,
so the same rules hold for Hydra, for JSON that travels to Flower apps, and for Python callers.

A dataclass checks its own value ranges in ``__post_init__`` and raises :class:`ConfigError` (or ``ValueError``)
naming the key. A field whose type has a ``from_mapping`` classmethod converts itself (e.g. a strategy config,
chosen by name from the strategy registry).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")


#: The largest seed a run takes: seeds are 32-bit words of NumPy's ``SeedSequence`` (``fl_kd.kd.seeding``), so a
#: larger one would give the run of ``seed % 2**32`` while its config names another.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names the key."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def require_defaults_unless(config: Any, keys: Iterable[str], used: bool, why: str, prefix: str = "strategy.") -> None:
    """Refuse any of ``keys`` of dataclass ``config`` changed from its default where ``used`` is false: the run
    would drop it without a word (a run that looks like a variant, and is the default)."""
    if used:
        return
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    for key in keys:
        value = getattr(config, key)
        require(value == defaults[key], f"{prefix}{key}={value} {why}: leave it at its default ({defaults[key]})")


def check_choice(key: str, value: object, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices`` (a registry's names)."""
    allowed = tuple(choices)
    require(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")


def absolute_path(path: str | None) -> str | None:
    """A path a user gave, made absolute against the folder the command ran in.

    Flower's apps run in the run folder, not where the user typed the command, so a relative path that the
    start-up checks found pointed nowhere once the run began.
    """
    return None if path is None else str(Path(path).expanduser().absolute())


def check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """A number must lie in the interval ``[low, high]`` (or open at either end)."""
    ok = True
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{'-inf' if low is None else _bound(low)}, {'inf' if high is None else _bound(high)}{right}"
        raise ConfigError(f"{key} must be in {bounds}, got {value!r}")


def _bound(value: float) -> str:
    """An interval's end as a message shows it: a whole number in full (a seed's 4294967295), others short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def from_mapping(cls: type[T], values: Mapping[str, Any] | T, key: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, strictly.

    Unknown keys, wrong types (a string for a number, ``1.5`` for an int, NaN anywhere) and out-of-range values
    raise :class:`ConfigError` naming the key (``key`` is the path of ``values`` within a larger config). Missing
    keys take the field's default. An instance of ``cls`` is returned as it is. A class with its own
    ``from_mapping(values, key)`` classmethod (a strategy config picked by name, a device profile) converts itself.
    """
    if isinstance(values, cls):
        return values
    custom = getattr(cls, "from_mapping", None)
    if custom is not None:
        return typing.cast(T, custom(values, key))
    return build_dataclass(cls, values, key)


def build_dataclass(cls: type[T], values: Any, key: str = "") -> T:
    """The generic part of :func:`from_mapping`, also for classes whose own ``from_mapping`` ends here."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key or cls.__name__} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [field.name for field in dataclasses.fields(cls) if field.init]  # type: ignore[arg-type]
    unknown = sorted(str(name) for name in values if name not in known)
    if unknown:
        where = f" in {key}" if key else ""
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown key{plural} {', '.join(unknown)}{where}; known: {', '.join(known)}")
    kwargs = {name: convert(hints[name], value, _join(key, name)) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err}" if key else str(err)) from err


def convert(hint: Any, value: Any, key: str) -> Any:
    """``value`` checked against (and lightly converted to) the type ``hint``; raises :class:`ConfigError`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null")
        errors = []
        for arm in (arg for arg in args if arg is not type(None)):
            try:
                return convert(arm, value, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) > 1:
            raise ConfigError(f"{key}={value!r} fits none of {hint}")
        raise ConfigError(errors[0] + (" (or null)" if type(None) in args else ""))
    if value is None:
        raise ConfigError(f"{key} must not be null")
    if origin is typing.Literal:
        check_choice(key, value, args)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [convert(item, element, f"{key}[{index}]") for index, element in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(name): convert(item, element, _join(key, str(name))) for name, element in value.items()}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or hasattr(hint, "from_mapping")):
        return from_mapping(hint, value, key)
    raise ConfigError(f"{key}: unsupported field type {hint!r}")  # a schema bug, not a user error


def to_mapping(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON-ready values; the inverse of :func:`from_mapping`."""
    to_dict: Callable[[], Any] | None = getattr(obj, "to_dict", None)
    if to_dict is not None and not isinstance(obj, type):
        return to_mapping(to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: to_mapping(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(name): to_mapping(value) for name, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(value) for value in obj]
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
