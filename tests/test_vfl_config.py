"""The `fl-kd-vfl` config: one schema in the core, Hydra files derived from it, strict checks, outputs and DCS."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.simulations.vfl import run_experiment
from fl_kd.simulations.vfl_console import print_vfl_summary
from fl_kd.simulations.vfl_schema import load_config
from fl_kd.vfl.attacks import attack_class, available_attacks
from fl_kd.vfl.config import DefenceConfig, TrainingConfig, VFLRunConfig, default_params
from fl_kd.vfl.defences import available_defences
from fl_kd.vfl.metrics import dcs
from fl_kd.vfl.protocol import decode_config, encode_config

CONF = Path(__file__).resolve().parents[1] / "conf"
VFL_GROUPS = ("vfl_split", "vfl_model", "defence", "attack")
TINY = ["training.epochs=2", "training.batch_size=128", "simulation.backend=inprocess", "seed=1"]


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="vfl", overrides=list(overrides))


def _plain(cfg: DictConfig) -> dict[str, Any]:
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return cast(dict[str, Any], raw)  # a config's keys are strings


# -- one schema ----------------------------------------------------------------------------------------------------
def test_the_default_composition_is_the_core_default() -> None:
    # Every key Hydra composes is a core field, and every default is the core's: fl-kd-vfl runs VFLRunConfig().
    assert _plain(_compose()) == to_mapping(VFLRunConfig())
    assert load_config(_compose()) == VFLRunConfig()


@pytest.mark.parametrize("group", VFL_GROUPS)
def test_each_option_file_extends_the_core_schema_and_sets_only_what_differs(group: str) -> None:
    options = sorted(path.stem for path in (CONF / group).glob("*.yaml"))
    assert options
    for option in options:
        text = yaml.safe_load((CONF / group / f"{option}.yaml").read_text())
        schema = f"/schema/{group}" if group in ("vfl_split", "vfl_model") else f"/schema/{group}/{option}"
        assert text.pop("defaults") == [f"{schema}@_here_", "_self_"], option
        chosen = [f"{group}={option}" if group != "attack" else f"attack=[{option}]"]
        if text.get("top", "sum") != "sum":  # the default attacks include DLI, which only the sum top admits
            chosen.append("attack=[passive_model_completion]")
        composed = _plain(_compose(*chosen))
        node = composed[group]
        base = _schema_node(group, option)
        for key, value in _flatten(text).items():
            assert _flatten(base).get(key, object()) != value, f"{group}/{option}.yaml restates the default {key}"
            assert _flatten(node)[key] == value
        load_config(composed)  # and the composed option passes the core's checks


def _schema_node(group: str, option: str) -> dict[str, Any]:
    defaults = VFLRunConfig()
    if group == "defence":
        return dict(to_mapping(DefenceConfig.defaults(option)))
    if group == "attack":
        return {option: default_params(attack_class(option))}
    return dict(to_mapping(getattr(defaults, group)))


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_registered_defence_and_attack_has_an_option_file() -> None:
    assert set(available_defences()) == {p.stem for p in (CONF / "defence").glob("*.yaml")}  # cae too: an alias
    assert set(available_attacks()) - {"none"} == {p.stem for p in (CONF / "attack").glob("*.yaml")}


def test_group_choices_map_onto_the_core_config() -> None:
    config = load_config(_compose("defence=gaussian", "defence.params.scale=0.2", "vfl_split=blocks3"))
    assert (config.defence.name, config.defence.params["scale"]) == ("gaussian", 0.2)
    assert (config.vfl_split.scheme, config.vfl_split.num_parties, config.num_feature_parties) == ("blocks", 3, 2)
    assert config.vfl_model.top == "sum" and config.training.max_train_samples == 5000
    assert config.attack["passive_model_completion"]["num_known"] == 40
    every_attack = sorted(path.stem for path in (CONF / "attack").glob("*.yaml"))
    assert sorted(load_config(_compose(f"attack=[{','.join(every_attack)}]")).attack) == every_attack
    assert load_config(_compose("attack=[]")).attack == {}
    for dataset in ("breast_cancer", "credit", "fashion_mnist"):
        assert load_config(_compose(f"dataset={dataset}", "defence=coae")).dataset.name == dataset


def test_the_config_travels_as_json_unchanged() -> None:
    config = load_config(_compose("defence=dcae", "vfl_model=mlp_top", "attack=[batch_label_inference]"))
    assert decode_config(encode_config(config)) == config


Mistake = Callable[[dict[str, Any]], None]
MISTAKES: list[tuple[Mistake, str]] = [
    (lambda c: c["training"].update(epoch=3), "unknown key epoch in training"),  # misspelt key
    (lambda c: c["defence"].update(parmas={}), "parmas"),  # misspelt key inside a group file
    (lambda c: c["training"].update(epochs="many"), "training.epochs must be an integer"),  # wrong type
    (lambda c: c["vfl_model"].update(bottom_hidden=["wide"]), r"vfl_model.bottom_hidden\[0\]"),
    (lambda c: c["defence"].update(name="tinfoil"), "defence.name='tinfoil'"),
    (lambda c: c["defence"].update(name="gaussian", params={"sigma": 0.1}), "sigma in defence.params"),
    (lambda c: c["defence"].update(name="gaussian", params={"scale": "loud"}), "defence.params.scale"),
    (lambda c: c["defence"].update(name="gaussian", params={"scale": -1.0}), "non-negative"),
    (lambda c: c["attack"].update(label_guessing={}), "label_guessing"),
    (lambda c: c["attack"]["passive_model_completion"].update(num_know=3), "num_know"),
    (lambda c: c["vfl_split"].update(num_parties=3), "halves needs num_parties=2"),
    (lambda c: c.update(attacker_party=1), "attacker_party"),
    (lambda c: c["simulation"].update(backend="ray"), "simulation.backend"),
    (lambda c: c["simulation"].update(num_cpus=0), "simulation.num_cpus"),
    (lambda c: c["vfl_model"].update(top="attention"), "vfl_model.top"),
    (lambda c: c["training"].update(optimizer="lbfgs"), "training.optimizer"),
    (lambda c: c["training"].update(lr=0.0), r"training.lr must be in \(0, inf\], got 0.0"),
    (lambda c: c["training"].update(lr=float("nan")), "training.lr must be a finite number"),
    (lambda c: c["dataset"].update(name="imagenet"), "imagenet"),
    (lambda c: c["dataset"].update(download=True), "dataset.download"),
    (lambda c: c["scoring"].update(beta=2.0), "scoring.beta"),
]


@pytest.mark.parametrize(("change", "message"), MISTAKES)
def test_config_mistakes_are_config_errors_naming_the_key(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    raw = _plain(_compose())
    change(raw)
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_python_callers_get_the_same_checks() -> None:
    with pytest.raises(ConfigError, match=r"training.lr must be in \(0, inf\], got nan"):
        TrainingConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="vfl_split.scheme lists 3 parties"):
        from_mapping(VFLRunConfig, {"vfl_split": {"scheme": [[0], [1], [2]], "num_parties": 2}})


def test_misspelt_command_line_override_is_rejected_by_hydra() -> None:
    with pytest.raises(ConfigCompositionException):
        _compose("training.epoch=3")


# -- running -------------------------------------------------------------------------------------------------------
def _strict_json(path: Path) -> dict[str, Any]:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return dict(json.loads(path.read_text(), parse_constant=reject))


def test_inprocess_run_writes_config_results_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, Any]] = []
    results = run_experiment(load_config(_compose(*TINY)), tmp_path, report=rows.append)
    assert results["mp"] > 0.85 and results["auc"] > 0.9
    assert len(results["train_loss"]) == 2 and results["skipped_batches"] == 0
    assert [row["loss"] for row in rows] == results["train_loss"]
    dli = results["attacks"]["direct_label_inference"]
    assert dli["ap"] == 1.0  # the sum top leaks every label without a defence
    # No defence: the run is its own MP*, so DCS only charges the attack performance.
    assert results["mp_star"] == results["mp"]
    assert results["dcs"]["per_attack"]["direct_label_inference"]["dcs"] == pytest.approx(1 / (1 + math.sqrt(0.5)))
    assert set(results["dcs"]["t_dcs"]) == {"LI"}
    saved = _strict_json(tmp_path / "results.json")
    assert saved["mp"] == results["mp"] and saved["config"]["defence"]["name"] == "none"
    assert load_config(OmegaConf.load(tmp_path / "config.yaml")).training.epochs == 2
    progress = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in progress] == [1, 2]  # as the console numbers them
    print_vfl_summary(results, "tiny")
    printed = capsys.readouterr().out
    assert "MP (test accuracy)" in printed and "direct_label_inference" in printed


def test_dcs_against_a_baseline_run_and_given_mp_star(tmp_path: Path) -> None:
    defended = [*TINY, "defence=gaussian", "defence.params.scale=0.5", "attack=[direct_label_inference]"]
    without_mp_star = run_experiment(load_config(_compose(*defended)), tmp_path / "none")
    assert without_mp_star["mp_star"] is None and "dcs" not in without_mp_star
    baseline = run_experiment(load_config(_compose(*defended, "scoring.baseline=true")), tmp_path / "baseline")
    vanilla = run_experiment(load_config(_compose(*TINY)), tmp_path / "vanilla")
    assert baseline["mp_star"] == vanilla["mp"]
    given = run_experiment(load_config(_compose(*defended, "scoring.mp_star=1.0")), tmp_path / "given")
    ap = given["attacks"]["direct_label_inference"]["ap"]
    assert ap < 1.0  # noise of scale 0.5 hides labels from the attack
    assert given["dcs"]["per_attack"]["direct_label_inference"]["dcs"] == dcs(ap, given["mp"], 1.0)


@pytest.mark.requires_fashion_mnist
def test_fashion_mnist_with_coae_runs_on_a_training_subset(tmp_path: Path) -> None:
    config = load_config(
        _compose(
            "dataset=fashion_mnist",
            "defence=coae",
            "defence.params.epochs=1",
            "defence.params.num_train=2000",
            "training.max_train_samples=300",
            "training.max_test_samples=200",
            "training.epochs=1",
            "training.batch_size=100",
            "attack=[direct_label_inference]",
            "simulation.backend=inprocess",
        )
    )
    results = run_experiment(config, tmp_path)
    assert results["num_train"] == 300 and results["num_samples"] == 200
    assert "auc" not in results  # ten classes
    assert 0.0 <= results["attacks"]["direct_label_inference"]["ap"] <= 1.0


def test_console_shows_one_line_per_epoch_and_the_table(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fl-kd-vfl"
    completed = subprocess.run(
        [str(script), *TINY, "training.epochs=3", "attack=[]", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    assert "MP (test accuracy)" in completed.stdout
    assert "INFO" not in completed.stdout + completed.stderr  # log lines go to the run folder's log file
    assert "epoch 1:" in (tmp_path / "vfl.log").read_text()  # numbered as on the console
    assert _strict_json(tmp_path / "results.json")["backend"] == "inprocess"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vfl_model": {"top_hidden": [32]}}, "vfl_model.top_hidden=[32] is read only by vfl_model.top=mlp"),
        (
            {"attack": {"direction_scoring": {"known_positive_ids": [3, 5], "num_known": 5}}},
            "num_known and seed draw the known positives",
        ),
        ({"scoring": {"mp_star": 0.9, "baseline": True}}, "scoring.baseline=true runs vanilla VFL for MP*"),
        ({"defence": {"name": "gaussian"}, "scoring": {"beta": 0.9}}, "scoring.beta=0.9 weighs DCS, which needs MP*"),
        # It read the 16 entries of the linear top's embedding gradient as 16 classes and scored AP 0.0.
        (
            {"vfl_model": {"top": "mlp"}},
            "attack direct_label_inference reads the gradient of each class's logit, which only vfl_model.top=sum",
        ),
        (
            {"vfl_model": {"top": "mlp"}, "attack": {"adaptive_label_inference": {}}},
            "attack adaptive_label_inference reads the gradient of each class's logit",
        ),
    ],
)
def test_a_vfl_setting_that_the_run_would_drop_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
        from_mapping(VFLRunConfig, values)


def test_a_sum_top_over_embeddings_of_another_size_is_refused_before_training() -> None:
    """It was a traceback from the model's constructor, after the data loaded."""
    config = from_mapping(VFLRunConfig, {"vfl_model": {"embedding_dim": 5}})
    with pytest.raises(ConfigError, match="vfl_model.embedding_dim=5 must be the 2 classes"):
        config.check_num_classes(2)
    mlp = {"top": "mlp", "embedding_dim": 5}
    from_mapping(VFLRunConfig, {"vfl_model": mlp, "attack": {"passive_model_completion": {}}}).check_num_classes(2)


def test_known_labels_that_leave_no_sample_to_attack_are_refused_before_training() -> None:
    """The adaptive pair found that only after the whole training."""
    config = from_mapping(VFLRunConfig, {"attack": {"gradient_clustering": {"known_labels": 455}}})
    with pytest.raises(ConfigError, match="gradient_clustering.known_labels=455 leaves none of the 455 training"):
        config.check_num_train(455)
    config.check_num_train(456)


def test_a_seed_beyond_32_bits_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967295\], got 4294967296"):
        from_mapping(VFLRunConfig, {"seed": 2**32})
    assert from_mapping(VFLRunConfig, {"seed": 2**32 - 1}).seed == 2**32 - 1


def test_an_epoch_line_shows_a_short_epoch_in_milliseconds() -> None:
    from fl_kd.simulations.vfl_console import epoch_line

    assert epoch_line({"epoch": 1, "loss": 0.5, "seconds": 0.034}, 2) == "epoch 1/2  loss 0.5000  skipped 0  34 ms"
    assert epoch_line({"epoch": 2, "loss": 0.25, "seconds": 2.44, "mp": 0.9}, 2).endswith("2.4 s  MP 0.9000")
