"""Hydra's config groups derived from the core's dataclasses, and composed configs turned back into them.

Each group option in ``conf/`` starts from a schema node stored here from a core dataclass's defaults
(``defaults: [/schema/strategy/fedgems@_here_, _self_]``) and sets only what differs, so every default is declared
once, in the core. After composition, :func:`to_core` hands the plain mapping to :func:`fl_kd.config.from_mapping`,
the one place where keys, types and values are checked.
"""

from __future__ import annotations

from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.data.config import DatasetConfig
from fl_kd.runtime import SimulationConfig

T = TypeVar("T")

SCHEMA_GROUP = "schema"


def store_schema(group: str, defaults: Any, name: str | None = None, drop: tuple[str, ...] = ()) -> None:
    """Store ``defaults`` (a core dataclass instance) as ``/schema/<group>[/<name>]`` for config files to extend.

    ``drop`` leaves out fields that are config groups of their own (a top-level schema holds scalars only).
    """
    node = to_mapping(defaults)
    for key in drop:
        node.pop(key, None)
    if name is None:
        ConfigStore.instance().store(group=SCHEMA_GROUP, name=group, node=node)
    else:
        ConfigStore.instance().store(group=f"{SCHEMA_GROUP}/{group}", name=name, node=node)


def store_shared_schemas() -> None:
    """Schema nodes of the groups every entry point composes: ``dataset`` and ``simulation``."""
    store_schema("dataset", DatasetConfig())
    store_schema("simulation", SimulationConfig())


def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The composed config as plain, resolved values, without Hydra's own ``hydra`` node."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping, got {type(raw).__name__}")
    raw.pop("hydra", None)
    return raw  # type: ignore[return-value]


def to_core(cls: type[T], cfg: DictConfig | dict[str, Any]) -> T:
    """The core dataclass ``cls`` built strictly from a composed config; mistakes raise ``ConfigError``."""
    return from_mapping(cls, plain(cfg))
