"""The Hydra side of `fl-kd-vfl`'s config: schema nodes stored from the core's defaults, and the way back.

Every option file of the VFL config groups (``conf/vfl.yaml``, ``conf/vfl_split``, ``conf/vfl_model``,
``conf/defence``, ``conf/attack``) extends one of the nodes stored here and sets only what differs from the core's
default, so each default is declared once, in :mod:`fl_kd.vfl.config`. Defence and attack options extend the
defaults of their class (``/schema/defence/<name>``, ``/schema/attack/<name>``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fl_kd.config import to_mapping
from fl_kd.simulations.schema import store_schema, store_shared_schemas, to_core
from fl_kd.vfl.attacks import attack_class, available_attacks
from fl_kd.vfl.config import DefenceConfig, VFLRunConfig, default_params
from fl_kd.vfl.defences import available_defences

#: Fields of :class:`VFLRunConfig` that are config groups with option files of their own.
GROUPS = ("dataset", "vfl_split", "vfl_model", "defence", "attack", "simulation")


def register_vfl_schema() -> None:
    """Store ``/schema/vfl`` and the schema node of every VFL group option in Hydra's ConfigStore."""
    defaults = VFLRunConfig()
    # The attack group is a list of options merged into `attack`; starting from {} lets `attack=[]` mean none.
    store_schema("vfl", {**to_mapping(defaults), "attack": {}}, drop=tuple(g for g in GROUPS if g != "attack"))
    store_shared_schemas()
    store_schema("vfl_split", defaults.vfl_split)
    store_schema("vfl_model", defaults.vfl_model)
    for name in available_defences():
        store_schema("defence", DefenceConfig.defaults(name), name=name)
    for name in available_attacks():
        store_schema("attack", {name: default_params(attack_class(name))}, name=name)


def load_config(cfg: DictConfig | dict[str, Any]) -> VFLRunConfig:
    """The run described by a composed config; a wrong key, type or value raises ``fl_kd.config.ConfigError``."""
    return to_core(VFLRunConfig, cfg)
