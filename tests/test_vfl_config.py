"""The `fl-kd-vfl` Hydra entry point: composition, schema validation, the in-process backend, outputs and DCS."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from fl_kd.simulations.config import ConfigError
from fl_kd.simulations.vfl import app_config, print_vfl_summary, run_experiment, validate_vfl_config
from fl_kd.vfl.metrics import dcs

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["training.epochs=2", "training.batch_size=128", "simulation.backend=inprocess", "seed=1"]


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="vfl", overrides=list(overrides))


def test_default_config_validates_and_maps_onto_the_core_config() -> None:
    cfg = validate_vfl_config(_compose())
    assert cfg.dataset.name == "breast_cancer"
    assert cfg.defence.name == "none"
    assert cfg.simulation.backend == "flwr_run"
    assert list(cfg.attack) == ["direct_label_inference", "passive_model_completion"]
    app = app_config(validate_vfl_config(_compose("defence=gaussian", "defence.params.scale=0.2", "vfl_split=blocks3")))
    assert (app.vfl.defence, app.vfl.defence_params["scale"]) == ("gaussian", 0.2)
    assert (app.vfl.split, app.vfl.num_parties, app.num_feature_parties) == ("blocks", 3, 2)
    assert app.vfl.top == "sum" and app.vfl.max_train_samples == 5000
    assert app.attacks["passive_model_completion"]["num_known"] == 40


@pytest.mark.parametrize("group", ["vfl_split", "vfl_model", "defence"])
def test_every_group_option_composes_and_validates(group: str) -> None:
    options = sorted(path.stem for path in (CONF / group).glob("*.yaml"))
    assert options
    for option in options:
        validate_vfl_config(_compose(f"{group}={option}"))


def test_attacks_and_datasets_compose() -> None:
    every_attack = sorted(path.stem for path in (CONF / "attack").glob("*.yaml"))
    cfg = validate_vfl_config(_compose(f"attack=[{','.join(every_attack)}]"))
    assert sorted(cfg.attack) == every_attack
    assert validate_vfl_config(_compose("attack=[]")).attack == {}
    for dataset in ("breast_cancer", "credit", "fashion_mnist"):
        assert validate_vfl_config(_compose(f"dataset={dataset}", "defence=coae")).dataset.name == dataset


def _raw(*overrides: str) -> dict[str, Any]:
    raw = OmegaConf.to_container(_compose(*overrides), resolve=True)
    assert isinstance(raw, dict)
    return raw


MISTAKES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda c: c["training"].update(epoch=3), "epoch"),  # misspelt key
    (lambda c: c["defence"].update(parmas={}), "parmas"),  # misspelt key inside a group file
    (lambda c: c["training"].update(epochs="many"), "epochs"),  # wrong type
    (lambda c: c["vfl_model"].update(bottom_hidden=["wide"]), "bottom_hidden"),
    (lambda c: c["defence"].update(name="tinfoil"), "tinfoil"),
    (lambda c: c["defence"].update(name="gaussian", params={"sigma": 0.1}), "sigma"),  # unknown defence param
    (lambda c: c["attack"].update(label_guessing={}), "label_guessing"),
    (lambda c: c["attack"]["passive_model_completion"].update(num_know=3), "num_know"),
    (lambda c: c["vfl_split"].update(num_parties=3), "halves needs num_parties=2"),
    (lambda c: c.update(attacker_party=1), "attacker_party"),
    (lambda c: c["simulation"].update(backend="ray"), "backend"),
    (lambda c: c["vfl_model"].update(top="attention"), "top"),
    (lambda c: c["training"].update(optimizer="lbfgs"), "optimizer"),
    (lambda c: c["training"].update(lr=0.0), "lr"),
    (lambda c: c["dataset"].update(name="imagenet"), "imagenet"),
    (lambda c: c["scoring"].update(beta=2.0), "beta"),
]


@pytest.mark.parametrize(("change", "message"), MISTAKES)
def test_config_mistakes_are_config_errors(change: Callable[[dict[str, Any]], None], message: str) -> None:
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError, match=message):
        validate_vfl_config(raw)


def test_misspelt_command_line_override_is_rejected_by_hydra() -> None:
    with pytest.raises(ConfigCompositionException):
        _compose("training.epoch=3")


def _strict_json(path: Path) -> dict[str, Any]:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return dict(json.loads(path.read_text(), parse_constant=reject))


def test_inprocess_run_writes_config_results_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = validate_vfl_config(_compose(*TINY))
    results = run_experiment(cfg, tmp_path)
    assert results["mp"] > 0.85 and results["auc"] > 0.9
    assert len(results["train_loss"]) == 2 and results["skipped_batches"] == 0
    dli = results["attacks"]["direct_label_inference"]
    assert dli["ap"] == 1.0  # the sum top leaks every label without a defence
    # No defence: the run is its own MP*, so DCS only charges the attack performance.
    assert results["mp_star"] == results["mp"]
    assert results["dcs"]["per_attack"]["direct_label_inference"]["dcs"] == pytest.approx(1 / (1 + math.sqrt(0.5)))
    assert set(results["dcs"]["t_dcs"]) == {"LI"}
    saved = _strict_json(tmp_path / "results.json")
    assert saved["mp"] == results["mp"] and saved["config"]["defence"]["name"] == "none"
    assert OmegaConf.load(tmp_path / "config.yaml").training.epochs == 2
    print_vfl_summary(results, "tiny")
    printed = capsys.readouterr().out
    assert "MP (test accuracy)" in printed and "direct_label_inference" in printed


def test_dcs_against_a_baseline_run_and_given_mp_star(tmp_path: Path) -> None:
    defended = [*TINY, "defence=gaussian", "defence.params.scale=0.5", "attack=[direct_label_inference]"]
    without_mp_star = run_experiment(validate_vfl_config(_compose(*defended)), tmp_path / "none")
    assert without_mp_star["mp_star"] is None and "dcs" not in without_mp_star
    baseline = run_experiment(validate_vfl_config(_compose(*defended, "scoring.baseline=true")), tmp_path / "baseline")
    vanilla = run_experiment(validate_vfl_config(_compose(*TINY)), tmp_path / "vanilla")
    assert baseline["mp_star"] == vanilla["mp"]
    given = run_experiment(validate_vfl_config(_compose(*defended, "scoring.mp_star=1.0")), tmp_path / "given")
    ap = given["attacks"]["direct_label_inference"]["ap"]
    assert ap < 1.0  # noise of scale 0.5 hides labels from the attack
    assert given["dcs"]["per_attack"]["direct_label_inference"]["dcs"] == dcs(ap, given["mp"], 1.0)


def test_fashion_mnist_with_coae_runs_on_a_training_subset(tmp_path: Path) -> None:
    cfg = validate_vfl_config(
        _compose(
            "dataset=fashion_mnist",
            "defence=coae",
            "defence.params.epochs=1",
            "defence.params.num_train=2000",
            "training.max_train_samples=300",
            "training.max_test_samples=200",
            "training.epochs=1",
            "training.batch_size=100",
            "attack=[direct_label_inference,norm_scoring]",
            "simulation.backend=inprocess",
        )
    )
    results = run_experiment(cfg, tmp_path)
    assert results["num_train"] == 300 and results["num_samples"] == 200
    assert "auc" not in results  # ten classes
    assert 0.0 <= results["attacks"]["direct_label_inference"]["ap"] <= 1.0
    assert "binary" in results["attacks"]["norm_scoring"]["error"]


def test_console_script_runs_hydra_main(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fl-kd-vfl"
    completed = subprocess.run(
        [str(script), *TINY, "training.epochs=1", "attack=[]", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "MP (test accuracy)" in completed.stdout
    assert _strict_json(tmp_path / "results.json")["backend"] == "inprocess"
