"""`fl-kd-vfl` reproduces, bit for bit, the results recorded on main before the renovation.

Each fixture in ``tests/data/recorded`` holds the command it was recorded with; the run goes through the same
function as the entry point (:func:`fl_kd.simulations.vfl.run_experiment`, in-process backend), and every number
the fixture holds must come out exactly equal (floats compared with ``==``).
"""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from fl_kd.simulations.vfl import run_experiment
from fl_kd.simulations.vfl_schema import load_config

RECORDED = Path(__file__).parent / "data" / "recorded"
FIXTURES = ("fl_kd_vfl_default.json", "fl_kd_vfl_coae.json")


def overrides_of(command: str) -> list[str]:
    """The Hydra overrides of a recorded ``fl-kd-vfl ...`` command (a trailing ``(note)`` is not part of it)."""
    tokens = shlex.split(command)
    assert tokens[0] == "fl-kd-vfl"
    return list(itertools.takewhile(lambda token: not token.startswith("("), tokens[1:]))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_recorded_vfl_run_reproduces_exactly(fixture: str, tmp_path: Path) -> None:
    recorded = json.loads((RECORDED / fixture).read_text())
    expected: dict[str, Any] = recorded["results"]
    overrides = overrides_of(recorded["command"])
    assert "simulation.backend=inprocess" in overrides
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        config = load_config(compose(config_name="vfl", overrides=overrides))
    results = run_experiment(config, tmp_path)
    assert results["mp"] == expected["mp"]
    assert results["auc"] == expected["auc"]
    assert results["train_loss"] == expected["train_loss"]
    assert set(results["attacks"]) == set(expected["attacks"])  # the fixtures were written with sorted keys
    for name, attack in expected["attacks"].items():
        for key, value in attack.items():
            assert results["attacks"][name][key] == value, f"{name}.{key}"
        assert set(results["attacks"][name]) == set(attack), name
    assert results["mp_star"] == expected["mp_star"]
    assert results.get("dcs") == expected.get("dcs")
    for key in ("num_train", "num_samples", "skipped_batches", "failed_updates"):
        assert results[key] == expected[key], key
