"""The ``deploy`` node: its defaults come from :class:`DeploySettings` alone, and each mistake names its key."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import ConfigError, to_mapping
from fl_kd.simulations.deploy_settings import DeploySettings, split_deploy_settings


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="deploy", overrides=list(overrides))


def test_composed_deploy_node_is_the_dataclass_defaults() -> None:
    assert OmegaConf.to_container(_compose().deploy) == to_mapping(DeploySettings())


def test_deploy_settings_default_and_from_overrides() -> None:
    experiment, settings = split_deploy_settings(_compose("num_clients=3"))
    assert settings == DeploySettings() and settings.local_supernodes(experiment.num_clients) == 3
    assert experiment.num_clients == 3 and experiment.strategy.rounds == 2  # conf/deploy.yaml's small federation
    _, settings = split_deploy_settings(_compose("num_clients=3", "deploy.supernodes=2", "deploy.tls=false"))
    assert settings.supernodes == 2 and settings.tls is False and settings.local_supernodes(3) == 2
    _, settings = split_deploy_settings(_compose("num_clients=3", "deploy.min_clients=2", "deploy.round_timeout_s=30"))
    assert settings.round_policy().to_run_config() == {"min-clients": 2, "round-timeout": 30.0, "resume": False}


def test_a_config_without_deploy_node_takes_the_defaults() -> None:
    cfg = OmegaConf.to_container(_compose())
    assert isinstance(cfg, dict)
    del cfg["deploy"]
    assert split_deploy_settings(cfg)[1] == DeploySettings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+deploy.tsl=false",), r"unknown key tsl in deploy"),
        (("deploy.supernodes=4",), r"deploy\.supernodes must be at most num_clients=3"),
        (("deploy.supernodes=0",), r"deploy\.supernodes must be in \[1, inf\]"),
        (("deploy.supernodes=1.5",), r"deploy\.supernodes must be an integer"),
        (("deploy.tls=maybe",), r"deploy\.tls must be true or false"),
        (("deploy.tls=false", "deploy.certificates=/etc/certs"), r"deploy\.certificates is set but deploy\.tls=false"),
        (("deploy.startup_timeout_s=0",), r"deploy\.startup_timeout_s must be in \(0, inf\]"),
        (("deploy.run_timeout_s=nan",), r"deploy\.run_timeout_s must be a finite number"),
        (("deploy.min_clients=4",), r"deploy\.min_clients must be at most the 3 clients sampled per round"),
        (("deploy.min_clients=2", "strategy.fraction_fit=0.3"), r"at most the 1 clients sampled per round"),
        (("deploy.round_timeout_s=0",), r"deploy\.round_timeout_s must be in \(0, inf\]"),
        (("deploy.node_data=disk",), r"deploy\.node_data='disk' is not one of folder, dataset"),
        (("deploy.tls=false", "deploy.auth=true"), r"deploy\.auth=true needs TLS"),
        (("strategy.rounds=0",), r"strategy\.rounds"),  # the experiment config is still checked
        # composed with the main config, read by no deployment: accepted and recorded, it changed nothing
        (("simulation.num_cpus=8",), r"simulation\.num_cpus=8 is not read by fl-kd-deploy"),
        (("simulation.backend=inprocess",), r"simulation\.backend=inprocess is not read by fl-kd-deploy"),
    ],
)
def test_deploy_setting_mistakes_are_one_config_error_naming_the_key(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_deploy_settings(_compose("num_clients=3", *overrides))
