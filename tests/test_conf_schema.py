"""``conf/`` declares no setting of its own: every key maps to exactly one core dataclass field, and a group file
sets only what differs from the core default (the default lives once, in the dataclass)."""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fl_kd.config import to_mapping
from fl_kd.data.config import DatasetConfig
from fl_kd.kd.adversary import ADVERSARIES
from fl_kd.kd.adversary.config import DEFAULT_FRACTION, AdversaryConfig
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.models.presets import DEVICE_PROFILES
from fl_kd.partition.config import PartitionConfig
from fl_kd.runtime import SimulationConfig
from fl_kd.simulations.config import GROUPS, STRATEGY_PRESETS, experiment_config

CONF = Path(__file__).resolve().parents[1] / "conf"
SCHEMA_GROUPS = {"dataset": DatasetConfig, "partition": PartitionConfig, "simulation": SimulationConfig}


def _settings(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    values.pop("defaults", None)
    values.pop("hydra", None)
    return values


def _defaults(cls: type) -> dict[str, Any]:
    assert is_dataclass(cls)
    out = {}
    for field in fields(cls):
        if field.default is not MISSING:
            out[field.name] = field.default
        elif field.default_factory is not MISSING:
            out[field.name] = to_mapping(field.default_factory())
    return out


def _group_files() -> list[tuple[str, Path]]:
    return [(group, path) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "path"), _group_files(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_every_key_is_a_core_field_and_no_default_is_repeated(group: str, path: Path) -> None:
    settings = _settings(path)
    if group == "device_profile":
        # A named profile is declared once, in fl_kd.models.presets; its option file only extends it.
        assert not settings, f"{path.name} sets {set(settings)}; they live in DEVICE_PROFILES[{path.stem!r}]"
        assert "defaults" in yaml.safe_load(path.read_text()), f"{path.name} must extend its schema node"
        return
    if group == "strategy" and path.stem in STRATEGY_PRESETS:
        # A preset's defaults are its core config (a registered algorithm with other settings), not the class's.
        preset = STRATEGY_PRESETS[path.stem]()
        cls, defaults = type(preset), to_mapping(preset)
    else:
        cls = get_algorithm(path.stem).config_class if group == "strategy" else SCHEMA_GROUPS[group]
        defaults = _defaults(cls)
    unknown = set(settings) - set(defaults)
    assert not unknown, f"{path.name}: {unknown} are not fields of {cls.__name__}"
    repeated = {key for key, value in settings.items() if value == defaults[key] and key != "name"}
    assert not repeated, f"{path.name} repeats the core defaults of {repeated}; they live in {cls.__name__}"
    assert "defaults" in yaml.safe_load(path.read_text()), f"{path.name} must extend its schema node"


def test_a_strategy_preset_composes_to_its_core_config() -> None:
    for name, preset in STRATEGY_PRESETS.items():
        with initialize_config_module(config_module="fl_kd.conf", version_base=None):
            composed = compose(config_name="config", overrides=[f"strategy={name}", "transfer.unlabelled=40"])
        assert experiment_config(composed).strategy == preset()


def test_the_top_level_config_repeats_no_default() -> None:
    top = _settings(CONF / "config.yaml")
    assert not top, f"config.yaml sets {set(top)}; top-level defaults live in ExperimentConfig"


def test_the_composed_default_config_is_the_core_default() -> None:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        composed = OmegaConf.to_container(compose(config_name="config"), resolve=True)
    assert isinstance(composed, dict)
    core = experiment_config(composed)
    assert to_mapping(core) == composed
    expected = _defaults(ExperimentConfig) | {"device_profile": composed["device_profile"]}
    expected["strategy"] = to_mapping(get_algorithm("fedgems").config_class())
    assert composed == expected


@pytest.mark.parametrize("path", sorted((CONF / "adversary").glob("*.yaml")), ids=lambda p: p.stem)
def test_an_adversary_option_is_its_behaviours_core_defaults(path: Path) -> None:
    """The attackers' share and a behaviour's own settings are declared once, in ``AdversaryConfig.defaults``
    (they were repeated in twelve files, and ``AdversaryConfig`` alone named an attack without attackers)."""
    assert not _settings(path), f"{path.name} sets {set(_settings(path))}; they live in AdversaryConfig.defaults"
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        weights = ADVERSARIES.get(path.stem).kind == "weights"  # weight-sharing peers only
        strategy = ["strategy=feddf"] if weights else []
        composed = compose(config_name="config", overrides=[f"adversary={path.stem}", *strategy])
    assert experiment_config(composed).adversary == AdversaryConfig.defaults(path.stem)
    expected_fraction = 0.0 if path.stem == "none" else DEFAULT_FRACTION
    assert AdversaryConfig.defaults(path.stem).fraction == expected_fraction


def test_every_device_profile_option_composes_to_its_core_profile() -> None:
    options = sorted(path.stem for path in (CONF / "device_profile").glob("*.yaml"))
    assert options == sorted(DEVICE_PROFILES)
    for name in options:
        with initialize_config_module(config_module="fl_kd.conf", version_base=None):
            composed = compose(config_name="config", overrides=[f"device_profile={name}"])
        assert experiment_config(composed).device_profile == DEVICE_PROFILES[name]


def test_one_field_of_a_named_profile_can_be_overridden() -> None:
    overrides = [
        "device_profile.tiers.low.share=0.5",
        "device_profile.tiers.mid.share=0.3",
        "device_profile.tiers.high.lr=0.01",
    ]
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        composed = compose(config_name="config", overrides=overrides)
    profile = experiment_config(composed).device_profile
    assert (profile.tier("low").share, profile.tier("mid").share, profile.tier("high").lr) == (0.5, 0.3, 0.01)
    assert profile.tier("high").model == DEVICE_PROFILES["three_tier"].tier("high").model
