"""What the KD benchmark runs: the composed config of one seed and backend."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_module

from fl_kd.kd.config import ExperimentConfig
from fl_kd.simulations.config import experiment_config


def compose_config(seed: int, rounds: int, backend: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The default Hydra config with the seed, rounds and backend set, checked by the core config.

    Raises
    ------
    fl_kd.config.ConfigError
        When an override names an unknown key or a bad value.
    """
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[f"seed={seed}", f"strategy.rounds={rounds}", f"simulation.backend={backend}", *overrides],
        )
    return experiment_config(cfg)
