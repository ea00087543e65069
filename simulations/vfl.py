"""`fl-kd-vfl`: compose the Hydra config ``vfl.yaml`` and run one vertical-FL experiment.

``simulation.backend=flwr_run`` (default) runs the VFL ServerApp and ClientApp through ``flwr run`` on a local
simulated federation (one SuperNode per feature party plus one for the label party); ``simulation.backend=inprocess``
runs the same parties with the in-process loop of :mod:`fl_kd.vfl`, without Flower. Both give the same numbers for
the same seed. The Hydra run folder gets the resolved ``config.yaml`` and ``results.json``: MP (test accuracy, AUC
for binary tasks), each attack's AP, and VFLAIR's defence capability score (DCS) per attack against MP*.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fl_kd.data import available_datasets
from fl_kd.simulations.config import ConfigError, DatasetConfig, SimulationConfig, merge_into_schema
from fl_kd.simulations.flower_launcher import run_flower_simulation
from fl_kd.strategies.vfl import CONFIG_KEY, OUTPUT_KEY, RESULTS_FILE, VFLAppConfig, score_attacks
from fl_kd.strategies.vfl_app import write_results
from fl_kd.vfl.attacks import available_attacks, build_attack
from fl_kd.vfl.defences import available_defences, build_defence
from fl_kd.vfl.experiment import VFLConfig, build_experiment, run_vfl
from fl_kd.vfl.metrics import c_dcs, dcs, t_dcs_by_type
from fl_kd.vfl.parties import OPTIMIZERS

SERVERAPP = "fl_kd.strategies.vfl_app:app"
CLIENTAPP = "fl_kd.clients.vfl_app:app"


# -- schema --------------------------------------------------------------------------------------------------------
@dataclass
class VFLSplitConfig:
    scheme: str = "halves"
    num_parties: int = 2
    label_party_features: bool = True


@dataclass
class VFLModelConfig:
    top: str = "sum"
    embedding_dim: int | None = None
    bottom_hidden: list[int] = field(default_factory=lambda: [64])
    top_hidden: list[int] = field(default_factory=list)


@dataclass
class DefenceConfig:
    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class VFLTrainingConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "adam"
    batches_per_message: int = 1
    max_train_samples: int | None = 5000
    max_test_samples: int | None = 2000
    evaluate_every: int = 0
    timeout: float = 600.0


@dataclass
class ScoringConfig:
    mp_star: float | None = None
    baseline: bool = False
    beta: float = 0.5


@dataclass
class VFLRunConfig:
    seed: int = 0
    attacker_party: int = 0
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(name="breast_cancer"))
    vfl_split: VFLSplitConfig = field(default_factory=VFLSplitConfig)
    vfl_model: VFLModelConfig = field(default_factory=VFLModelConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    attack: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: VFLTrainingConfig = field(default_factory=VFLTrainingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_vfl_config(cfg: DictConfig | dict[str, Any]) -> DictConfig:
    """Return ``cfg`` merged into the schema; raise :class:`ConfigError` on unknown keys, wrong types or values.

    Defence and attack parameters are checked by building them (cheap: nothing trains before a run starts).
    """
    merged = merge_into_schema(VFLRunConfig, cfg)
    _check(
        merged.dataset.name in available_datasets(),
        f"dataset.name={merged.dataset.name!r} is not one of {available_datasets()}",
    )
    _check(not merged.dataset.download, "dataset.download=true: fl-kd-vfl reads local data only")
    split = merged.vfl_split
    _check(split.scheme in ("halves", "blocks"), f"vfl_split.scheme={split.scheme!r} is not one of halves, blocks")
    _check(split.scheme != "halves" or split.num_parties == 2, "vfl_split.scheme=halves needs num_parties=2")
    feature_parties = split.num_parties - 1 if split.label_party_features else split.num_parties
    _check(feature_parties >= 1, f"vfl_split.num_parties={split.num_parties} leaves no feature party")
    _check(0 <= merged.attacker_party < feature_parties, f"attacker_party must be in [0, {feature_parties})")
    model = merged.vfl_model
    _check(model.top in ("sum", "mlp"), f"vfl_model.top={model.top!r} is not one of sum, mlp")
    _check(model.embedding_dim is None or model.embedding_dim >= 1, "vfl_model.embedding_dim must be >= 1")
    _check(all(width >= 1 for width in [*model.bottom_hidden, *model.top_hidden]), "hidden widths must be >= 1")
    training = merged.training
    _check(training.epochs >= 1, f"training.epochs must be >= 1, got {training.epochs}")
    _check(training.batch_size >= 1, f"training.batch_size must be >= 1, got {training.batch_size}")
    _check(training.lr > 0, f"training.lr must be positive, got {training.lr}")
    _check(training.optimizer in OPTIMIZERS, f"training.optimizer={training.optimizer!r} is not one of {OPTIMIZERS}")
    _check(training.batches_per_message >= 1, "training.batches_per_message must be >= 1")
    for key in ("max_train_samples", "max_test_samples"):
        value = training[key]
        _check(value is None or value >= 1, f"training.{key} must be null or >= 1, got {value}")
    _check(training.evaluate_every >= 0, "training.evaluate_every must be >= 0")
    _check(training.timeout > 0, "training.timeout must be positive")
    _check(0.0 <= merged.scoring.beta <= 1.0, f"scoring.beta must be in [0, 1], got {merged.scoring.beta}")
    simulation = merged.simulation
    _check(
        simulation.backend in ("flwr_run", "inprocess"),
        f"simulation.backend={simulation.backend!r} is not one of flwr_run, inprocess",
    )
    _check(simulation.num_cpus_per_client >= 1 and simulation.num_cpus >= 1, "simulation CPU counts must be >= 1")
    _check(
        merged.defence.name in available_defences(),
        f"defence.name={merged.defence.name!r} is not one of {available_defences()}",
    )
    try:
        build_defence(merged.defence.name, **_params(merged.defence.params))
    except ValueError as err:
        raise ConfigError(f"defence: {err}") from err
    for name, params in merged.attack.items():
        _check(name in available_attacks(), f"attack {name!r} is not one of {available_attacks()}")
        try:
            build_attack(str(name), **_params(params))
        except ValueError as err:
            raise ConfigError(f"attack {name}: {err}") from err
    return merged


def _params(node: Any) -> dict[str, Any]:
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def app_config(cfg: DictConfig) -> VFLAppConfig:
    """The apps' run description from a validated config (one key at a time, nothing implicit)."""
    training = cfg.training
    vfl = VFLConfig(
        dataset=cfg.dataset.name,
        data_root=cfg.dataset.root,
        num_parties=cfg.vfl_split.num_parties,
        label_party_features=cfg.vfl_split.label_party_features,
        split=cfg.vfl_split.scheme,
        embedding_dim=cfg.vfl_model.embedding_dim,
        bottom_hidden=list(cfg.vfl_model.bottom_hidden),
        top=cfg.vfl_model.top,
        top_hidden=list(cfg.vfl_model.top_hidden),
        defence=cfg.defence.name,
        defence_params=_params(cfg.defence.params),
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        optimizer=training.optimizer,
        seed=cfg.seed,
        max_train_samples=training.max_train_samples,
        max_test_samples=training.max_test_samples,
        attacker_party=cfg.attacker_party,
        batches_per_message=training.batches_per_message,
    )
    attacks = {str(name): _params(params) for name, params in cfg.attack.items()}
    return VFLAppConfig(vfl=vfl, attacks=attacks, evaluate_every=training.evaluate_every, timeout=training.timeout)


# -- running -------------------------------------------------------------------------------------------------------
def run_inprocess(app_cfg: VFLAppConfig) -> dict[str, Any]:
    """The run with the in-process loop (:func:`fl_kd.vfl.train_vfl`); results shaped like the Flower run's."""
    # One thread, like every ClientApp, so both runtimes reduce floats in the same order.
    torch.set_num_threads(1)
    start = time.perf_counter()
    experiment = build_experiment(app_cfg.vfl)
    attacks = app_cfg.build_attacks()
    train_start = time.perf_counter()
    history = experiment.train(attacks)
    train_seconds = time.perf_counter() - train_start
    metrics = experiment.evaluate()
    return {
        "mp": metrics["accuracy"],
        **metrics,
        "train_loss": history.epoch_losses,
        "skipped_batches": len(history.skipped_batches),
        "failed_updates": len(history.failed_updates),
        "attacks": score_attacks(list(app_cfg.attacks), attacks, experiment.train_labels),
        "num_train": experiment.num_train,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
    }


def run_flower(app_cfg: VFLAppConfig, out_dir: Path, simulation: DictConfig) -> dict[str, Any]:
    """The run as a Flower simulation through ``flwr run``; the ServerApp writes the results into ``out_dir``."""
    results_path = out_dir / RESULTS_FILE
    results_path.unlink(missing_ok=True)
    code = run_flower_simulation(
        out_dir,
        SERVERAPP,
        CLIENTAPP,
        run_config={CONFIG_KEY: app_cfg.to_json(), OUTPUT_KEY: str(out_dir.resolve())},
        num_supernodes=app_cfg.num_feature_parties + 1,
        num_cpus_per_client=simulation.num_cpus_per_client,
        num_cpus=simulation.num_cpus,
    )
    if code != 0 or not results_path.exists():
        raise RuntimeError(
            f"the Flower simulation ended with exit code {code} without writing {results_path}; "
            f"see {out_dir / '.flwr' / 'local-superlink' / 'superlink.log'}"
        )
    results = json.loads(results_path.read_text())
    results["train_seconds"] = sum(results["epoch_seconds"])
    return dict(results)


def mp_star_of(cfg: DictConfig, app_cfg: VFLAppConfig, mp: float) -> tuple[float | None, str]:
    """MP* for DCS and where it came from: given, this run (no defence), a baseline run, or unavailable."""
    if cfg.scoring.mp_star is not None:
        return float(cfg.scoring.mp_star), "given"
    if app_cfg.vfl.defence == "none":
        return mp, "this run (no defence)"
    if cfg.scoring.baseline:
        vanilla = replace(app_cfg.vfl, defence="none", defence_params={})
        return float(run_vfl(vanilla)["mp"]), "baseline run without defence (in-process)"
    return None, "unavailable: set scoring.mp_star or scoring.baseline=true"


def defence_scores(results: dict[str, Any], mp_star: float, beta: float) -> dict[str, Any]:
    """DCS of every scored attack (with the raw and the adaptive AP), T-DCS per attack type and C-DCS."""
    per_attack = {}
    for name, result in results["attacks"].items():
        if "ap" in result:
            per_attack[name] = {
                "dcs": dcs(result["ap"], results["mp"], mp_star, beta=beta),
                "dcs_adaptive": dcs(result["ap_adaptive"], results["mp"], mp_star, beta=beta),
            }
    scores: dict[str, Any] = {"per_attack": per_attack}
    if per_attack:
        by_type = t_dcs_by_type({name: value["dcs"] for name, value in per_attack.items()})
        scores.update(t_dcs=by_type, c_dcs=c_dcs(by_type))
    return scores


def run_experiment(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run one validated experiment into ``out_dir``; returns (and writes) its results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    app_cfg = app_config(cfg)
    if cfg.simulation.backend == "inprocess":
        results = run_inprocess(app_cfg)
    else:
        results = run_flower(app_cfg, out_dir, cfg.simulation)
    results["backend"] = cfg.simulation.backend
    mp_star, source = mp_star_of(cfg, app_cfg, float(results["mp"]))
    results["mp_star"], results["mp_star_source"] = mp_star, source
    if mp_star is not None:
        results["dcs"] = defence_scores(results, mp_star, cfg.scoring.beta)
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_results(out_dir / RESULTS_FILE, results)
    return results


def print_vfl_summary(results: dict[str, Any], title: str) -> None:
    """Terminal tables: main task, then one row per attack with AP and DCS."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))

    main = Table(title=title)
    main.add_column("quantity")
    main.add_column("value", justify="right")
    epochs = len(results.get("train_loss", [])) or 1
    rows = [
        ("MP (test accuracy)", results.get("mp")),
        ("AUC", results.get("auc")),
        ("final train loss", (results.get("train_loss") or [None])[-1]),
        ("skipped batches", results.get("skipped_batches")),
        ("refused gradients", results.get("failed_updates")),
        ("training samples", results.get("num_train")),
        ("seconds per epoch", results.get("train_seconds", 0.0) / epochs),
        ("MP*", results.get("mp_star")),
    ]
    for label, value in rows:
        main.add_row(label, fmt(value))
    console = Console(width=140)
    console.print(main)
    if not results.get("attacks"):
        return
    attacks = Table(title="attacks")
    for column in ("attack", "AP", "AP adaptive", "DCS", "DCS adaptive", "note"):
        attacks.add_column(column, justify="left" if column in ("attack", "note") else "right")
    scores = results.get("dcs", {}).get("per_attack", {})
    for name, result in results["attacks"].items():
        score = scores.get(name, {})
        attacks.add_row(
            name,
            fmt(result.get("ap")),
            fmt(result.get("ap_adaptive")),
            fmt(score.get("dcs")),
            fmt(score.get("dcs_adaptive")),
            str(result.get("error", "")),
        )
    console.print(attacks)


@hydra.main(version_base=None, config_path="pkg://fl_kd.conf", config_name="vfl")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose, validate, run, summarise."""
    validated = validate_vfl_config(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_experiment(validated, out_dir)
    title = (
        f"fl-kd-vfl: {validated.dataset.name}, defence {validated.defence.name}, backend {validated.simulation.backend}"
    )
    print_vfl_summary(results, title)
    print(f"run folder: {out_dir}")


if __name__ == "__main__":
    main()
