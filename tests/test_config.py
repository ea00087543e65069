"""The core config is the one schema: strict conversion from plain mappings, JSON round trip, clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedgems import FedGEMSConfig

PROFILE = {
    "name": "two",
    "server_model": "cnn_small",
    "tiers": {
        "zeta": {"model": "cnn_tiny", "share": 0.25, "local_epochs": 1},
        "alpha": {"model": "cnn_small", "share": 0.75, "local_epochs": 2},
    },
}


def _config(**values: Any) -> ExperimentConfig:
    return from_mapping(ExperimentConfig, {"device_profile": PROFILE} | values)


def test_json_round_trip_keeps_every_field_and_the_tier_order() -> None:
    config = _config(num_clients=6, partition={"name": "dirichlet", "alpha": 0.3}, seed=3)
    restored = ExperimentConfig.from_json(config.to_json())
    assert restored == config
    assert [tier.name for tier in restored.device_profile.tiers] == ["zeta", "alpha"]
    assert isinstance(restored.strategy, FedGEMSConfig)
    assert to_mapping(restored) == json.loads(config.to_json())


def test_unknown_keys_are_an_error_naming_the_key() -> None:
    text = _config().to_json().replace('"rounds"', '"roundz"')
    with pytest.raises(ConfigError, match="roundz in strategy"):
        ExperimentConfig.from_json(text)
    with pytest.raises(ConfigError, match="unknown key colour"):
        _config(colour="blue")


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"transfer": {"labelled": 0, "unlabelled": 50}}, "fedgems judges clients by labels"),
        ({"transfer": {"labelled": 0, "unlabelled": 0}}, "the transfer set is empty"),
        ({"transfer": {"unlabelled": -1}}, "transfer.unlabelled"),
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": "3"}, "num_clients must be an integer"),
        ({"num_clients": 2.5}, "num_clients must be an integer"),
        ({"strategy": {"server_lr": math.nan}}, "strategy.server_lr must be a finite number"),
        ({"strategy": {"server_lr": 0.0}}, "strategy.server_lr"),
        ({"strategy": {"fraction_fit": 0.0}}, "strategy.fraction_fit"),
        ({"strategy": {"epsilon": 1.5}}, "strategy.epsilon"),
        ({"strategy": {"weighting": "median"}}, "strategy.weighting='median' is not one of inverse_entropy"),
        ({"strategy": {"logits_dtype": "int8"}}, "strategy.logits_dtype"),
        ({"strategy": {"name": "fedsgd"}}, "unknown strategy 'fedsgd'"),
        ({"strategy": {"checkpoint": 3}}, "strategy.checkpoint must be a string, got 3 (or null)"),  # str | None
        ({"simulation": {"num_cpus": 0}}, "simulation.num_cpus"),
        ({"simulation": {"num_cpus_per_client": 3}}, "simulation.num_cpus_per_client"),
        ({"simulation": {"backend": "ray"}}, "simulation.backend='ray'"),
        ({"partition": {"name": "pathological"}}, "partition.classes_per_client is required"),
        ({"partition": {"alpha": -1.0}}, "partition.alpha"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name='imagenet'"),
        ({"device_profile": {"name": "x", "server_model": "cnn_small", "tiers": {}}}, "device_profile"),
        ({"device_profile": PROFILE | {"tiers": {"a": {"model": "cnn_tiny", "share": 0.5}}}}, "sum to 1"),
        ({"strategy": {"rounds": True}}, "strategy.rounds must be an integer"),
        ({"device": "tpu:9"}, "device must be a torch device"),
        ({"max_abs_value": 1e39}, "max_abs_value"),
    ],
)
def test_bad_values_are_refused_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        _config(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"partition": {"name": "pathological", "classes_per_client": 2, "alpha": 0.05}}, "partition.alpha=0.05"),
        ({"partition": {"name": "iid", "alpha": 0.1}}, "is not read by partition.name=iid"),
        ({"partition": {"classes_per_client": 3}}, "partition.classes_per_client=3 is not read by"),
        ({"strategy": {"consensus_margin": 0.3}}, "strategy.consensus_margin is a setting of the consensus screen"),
        ({"strategy": {"consensus_raise": True}}, "strategy.consensus_raise is a setting of the consensus screen"),
        (
            {"strategy": {"consensus_z": 3.0, "consensus_raise_margin": 0.1}},
            "strategy.consensus_raise_margin is a setting of the raise test",
        ),
        (
            {"strategy": {"consensus_z": 3.0, "consensus_raise": True, "consensus_raise_margin": 1.0}},
            "strategy.consensus_raise_margin",
        ),
        (
            {"strategy": {"name": "dsfl", "consensus_z": 3.0, "consensus_raise": "yes"}},
            "consensus_raise must be true or false",
        ),
        ({"strategy": {"name": "fedmd", "consensus_margin": 0.3}}, "set strategy.consensus_z too"),
        ({"strategy": {"reliability_power": 1.0}}, "used only with strategy.unlabelled_trust=class_reliability"),
        ({"strategy": {"unlabelled_per_round": 50}}, "unlabelled_per_round=50 asks unlabelled samples"),
        ({"strategy": {"name": "fedmd", "pretrain_public": False, "pretrain_epochs": 1}}, "pretrain_epochs=1 is"),
        ({"strategy": {"name": "fedmd", "trim_fraction": 0.4}}, "used only with strategy.aggregation=trimmed_mean"),
        ({"strategy": {"name": "fedmd", "num_malicious": 3}}, "used only with strategy.aggregation=krum or"),
        ({"strategy": {"name": "fedmd", "trust_power": 1.0}}, "trust_power=1.0 is used only with"),
        ({"strategy": {"name": "fedmd", "server_epochs": 0, "server_lr": 0.5}}, "server_lr=0.5 is not read with"),
        ({"strategy": {"name": "feddf", "distill_epochs": 0, "distill_lr": 0.5}}, "strategy.distill_lr=0.5 is not"),
        ({"strategy": {"name": "fedet", "transfer_epochs": 0, "transfer_lr": 0.5}}, "transfer_epochs=0"),
        # FedGEMS ran these two as the default run while its config.yaml recorded them, as FedMD's once did
        ({"strategy": {"server_epochs": 0, "server_lr": 0.5}}, "strategy.server_lr=0.5 is not read with"),
        ({"strategy": {"server_epochs": 0, "server_ema": 0.9}}, "strategy.server_ema=0.9 is not read with"),
    ],
)
def test_a_setting_that_the_run_would_drop_is_refused(values: dict[str, Any], message: str) -> None:
    """Changed where nothing reads it, a setting would make a run that looks like a variant and is the default."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(**values)
    # Where something reads it, the same setting is accepted.
    _config(partition={"name": "dirichlet", "alpha": 0.05})
    _config(strategy={"name": "fedmd", "consensus_z": 3.0, "consensus_margin": 0.3}, transfer={"unlabelled": 20})
    _config(strategy={"unlabelled_trust": "class_reliability", "reliability_power": 1.0}, transfer={"unlabelled": 20})
    _config(strategy={"name": "fedmd", "aggregation": "krum", "num_malicious": 1})


@pytest.mark.parametrize(
    ("text", "message"), [("{not json", "is not JSON"), ("", "is not JSON"), ("[1]", "JSON object")]
)
def test_text_that_is_no_experiment_config_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"the experiment config (must be a )?{message}"):
        ExperimentConfig.from_json(text)


def test_defaults_come_from_the_dataclasses() -> None:
    config = _config()
    assert config.strategy == FedGEMSConfig()
    assert (config.num_clients, config.transfer.labelled, config.transfer.unlabelled, config.seed) == (10, 300, 0, 0)
    assert config.partition.params() == {"alpha": 0.5}
    assert _config(partition={"name": "iid"}).partition.params() == {}
    assert _config(partition={"name": "pathological", "classes_per_client": 2}).partition.params() == {
        "classes_per_client": 2
    }


def test_a_relative_path_travels_to_the_flower_apps_as_the_folder_the_command_ran_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flower's apps run in the run folder: a relative ``dataset.root`` passed the start-up check in the user's
    folder, then the ServerApp found no data and the run ended in a traceback."""
    from fl_kd.vfl.config import VFLRunConfig

    monkeypatch.chdir(tmp_path)
    values = {"dataset": {"name": "fashion_mnist", "root": "data"}, "strategy": {"checkpoint": "~/server.pt"}}
    sent = json.loads(_config(**values).to_json())
    assert sent["dataset"]["root"] == str(tmp_path / "data")
    assert sent["strategy"]["checkpoint"] == str(Path.home() / "server.pt")
    assert from_mapping(ExperimentConfig, sent).dataset.root == str(tmp_path / "data")  # the same in the run folder
    defence = {"name": "coae", "params": {"path": "coae.pt"}}
    assert from_mapping(VFLRunConfig, {"defence": defence}).defence.params["path"] == str(tmp_path / "coae.pt")
