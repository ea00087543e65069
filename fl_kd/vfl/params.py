"""The parameters of a registered defence or attack class, read from its constructor's signature, so a config names
them, types them and gives them defaults without declaring them a second time (:mod:`fl_kd.vfl.config`)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from fl_kd.config import ConfigError, convert

_PLAIN = (bool, int, float, str)


def _signature(cls: type) -> dict[str, tuple[Any, Any]]:
    """Keyword parameters of ``cls``'s constructor: name -> (type hint, default or ``inspect.Parameter.empty``)."""
    try:
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except (NameError, TypeError):
        hints = {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: (hints.get(name, Any), param.default)
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind in kinds
    }


def _plain(hint: Any) -> bool:
    """Whether a parameter of type ``hint`` can come from a config file (scalars and lists of them)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return all(_plain(arm) for arm in typing.get_args(hint) if arm is not type(None))
    if typing.get_origin(hint) in (list, tuple, Sequence):
        return all(arm in _PLAIN for arm in typing.get_args(hint))
    return hint in _PLAIN


def default_params(cls: type) -> dict[str, Any]:
    """The config-settable parameters of ``cls`` (a defence or attack class) that have a default, at it."""
    return {
        name: list(default) if isinstance(default, tuple) else default
        for name, (hint, default) in _signature(cls).items()
        if _plain(hint) and default is not inspect.Parameter.empty
    }


def check_params(key: str, cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` for ``cls``'s constructor, with unknown names and wrong types refused as :class:`ConfigError`.

    A parameter that cannot come from a config file (an object, e.g. a trained autoencoder) is passed as given.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {params!r}")
    known = _signature(cls)
    unknown = sorted(str(name) for name in params if name not in known)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"unknown key{plural} {', '.join(unknown)} in {key}; known: {', '.join(known) or 'none'}")
    return {
        name: convert(known[name][0], value, f"{key}.{name}") if _plain(known[name][0]) else value
        for name, value in params.items()
    }
