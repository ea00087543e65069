"""One training of the VFL benchmark with its attacks, and the CoAE autoencoders the confusion defences share.

Every call into ``fl_kd.vfl`` (and the dataset loader) of the benchmark is in this module, so that a change of
the VFL API is a change here only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.vfl.grid import (
    ATTACK_ABBREVIATIONS,
    AUTOENCODER_DEFENCES,
    COAE_ENTROPY_WEIGHT,
    COAE_NUM_TRAIN,
    DefenceSpec,
    Setting,
    attack_names,
)
from fl_kd.data import load_dataset
from fl_kd.vfl.attacks import BatchLabelInference, build_attack
from fl_kd.vfl.attacks.relabelling import RELABELLED_KEY, RelabellingDirectLabelInference
from fl_kd.vfl.defences import ConfusionalAutoencoder, check_autoencoder, load_or_train_autoencoder
from fl_kd.vfl.defences.coae import default_epochs
from fl_kd.vfl.experiment import prepare_data, run_vfl
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import dcs
from fl_kd.vfl.split import make_split

__all__ = ["attacker_alone", "autoencoder_epochs", "dcs", "load_setting_data", "prepare_autoencoder", "run_one"]


def load_setting_data(setting: Setting) -> tuple[Any, dict[str, Any]]:
    """The dataset of ``setting`` and what the report says of it: classes, samples used, columns per party."""
    data = load_dataset(setting.dataset)
    split = make_split(data.input_shape, "halves", 2)
    info = {
        "num_classes": int(data.num_classes),
        "num_train": min(len(data.y_train), setting.max_train_samples or len(data.y_train)),
        "num_test": min(len(data.y_test), setting.max_test_samples or len(data.y_test)),
        "party_sizes": split.party_sizes,
    }
    return data, info


def autoencoder_epochs(num_classes: int, quick: bool) -> int:
    """Training epochs of the CoAE autoencoder: the library's default for ``C`` classes, 2 in a quick run."""
    return 2 if quick else default_epochs(num_classes)


def build_attacks(names: list[str], top: str, num_classes: int, seed: int) -> list[FeaturePartyAttack]:
    """Fresh attack objects for one training, seeded with the training's seed."""
    attacks: list[FeaturePartyAttack] = []
    for name in names:
        if name == "direct_label_inference":
            attacks.append(RelabellingDirectLabelInference(num_classes, seed=seed))
        elif name == "batch_label_inference":
            attacks.append(
                BatchLabelInference(top="sum" if top == "sum" else "linear", num_classes=num_classes, seed=seed)
            )
        elif name in ("passive_model_completion", "adaptive_label_inference", "gradient_clustering"):
            attacks.append(build_attack(name, num_classes=num_classes, seed=seed))
        elif name == "direction_scoring":
            attacks.append(build_attack(name, seed=seed))
        else:
            attacks.append(build_attack(name))
    return attacks


def autoencoder_path(out: Path, num_classes: int, seed: int, epochs: int) -> Path:
    """Cache file of the CoAE autoencoder for ``(C, seed)``, shared by CoAE and DCAE."""
    return out / "coae" / f"C{num_classes}_seed{seed}_lambda{COAE_ENTROPY_WEIGHT:g}_epochs{epochs}.pt"


def prepare_autoencoder(
    out: Path, num_classes: int, seed: int, epochs: int
) -> tuple[ConfusionalAutoencoder, dict[str, Any]]:
    """Train (or load) the autoencoder once per ``(C, seed)``; returns it and its check ``acc p`` / ``acc n``.

    The keyword arguments equal those ``CoAEDefence.setup`` passes, so the defence loads this very file.
    """
    path = autoencoder_path(out, num_classes, seed, epochs)
    # The training time is kept beside the cached weights, so that a resumed run still reports it.
    timing = path.with_suffix(".seconds.json")
    cached = path.exists()
    start = time.perf_counter()
    autoencoder = load_or_train_autoencoder(
        path, num_classes, entropy_weight=COAE_ENTROPY_WEIGHT, epochs=epochs, num_train=COAE_NUM_TRAIN, seed=seed
    )
    seconds = time.perf_counter() - start
    if not cached:
        timing.write_text(json.dumps({"seconds": seconds}))
    elif timing.exists():
        seconds = float(json.loads(timing.read_text())["seconds"])
    else:
        seconds = float("nan")
    acc_p, acc_n = check_autoencoder(autoencoder)
    return autoencoder, {
        "num_classes": num_classes,
        "seed": seed,
        "epochs": epochs,
        "acc_p": acc_p,
        "acc_n": acc_n,
        "seconds": seconds,
        "cached": cached,
        "path": str(path),
    }


def run_config(setting: Setting, spec: DefenceSpec, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """The ``fl_kd.vfl`` run config of one training, as the nested mapping ``run_vfl`` accepts.

    Attacks are passed to ``run_vfl`` as objects, so the config names none; the sample caps are always given,
    None meaning the whole split.
    """
    return {
        "seed": seed,
        "dataset": {"name": setting.dataset},
        "vfl_model": {"top": setting.top, "bottom_hidden": list(setting.bottom_hidden)},
        "defence": {"name": spec.name, "params": params},
        "attack": {},
        "training": {
            "epochs": setting.epochs,
            "batch_size": setting.batch_size,
            "lr": setting.lr,
            "optimizer": "adam",
            "max_train_samples": setting.max_train_samples,
            "max_test_samples": setting.max_test_samples,
        },
    }


def attacker_alone(setting: Setting, seed: int, data: Any) -> float:
    """Model completion's AP on the attacker's raw columns, with no training run: what it knows without VFL.

    The same attack object as in :func:`run_one` (same known labels, head and steps) on the same training samples
    of the same seed, with the identity in place of a trained bottom model. No defence of the protocol can push
    model completion below this: the attacker can always fit the head on its own columns.
    """
    config = run_config(setting, DefenceSpec("none", ()), seed, {})
    prepared = prepare_data(config, data)
    num_classes = int(data.num_classes)
    (attack,) = build_attacks(["passive_model_completion"], setting.top, num_classes, seed)
    attacker = int(config.get("attacker_party", 0))
    attack.after_training(nn.Flatten(), prepared.train_columns[attacker])
    result = attack.result(prepared.train_labels)
    return float(result["ap_adaptive"])


def run_one(
    setting: Setting,
    spec: DefenceSpec,
    seed: int,
    data: Any,
    out: Path,
    ae_epochs: int,
    shared_autoencoder: tuple[int, ConfusionalAutoencoder] | None = None,
) -> dict[str, Any]:
    """Train once with ``spec`` and score every applicable attack; returns one JSON-able record.

    CoAE/DCAE load the autoencoder of ``(C, seed)`` from the cache, or use ``shared_autoencoder`` =
    ``(its seed, model)`` when one autoencoder serves every seed.
    """
    num_classes = int(data.num_classes)
    params = dict(spec.params)
    autoencoder_seed = None
    if spec.name in AUTOENCODER_DEFENCES:
        if shared_autoencoder is not None:
            autoencoder_seed, params["autoencoder"] = shared_autoencoder
        else:
            autoencoder_seed = seed
            params["path"] = str(autoencoder_path(out, num_classes, seed, ae_epochs))
            params["epochs"] = ae_epochs
    names = attack_names(num_classes, setting.top)
    attacks = build_attacks(names, setting.top, num_classes, seed)
    result = run_vfl(run_config(setting, spec, seed, params), attacks, data=data)
    scores = {}
    for name, res in result["attacks"].items():
        if "error" in res:
            raise RuntimeError(f"{setting.key} {spec.label} seed {seed}: attack {name} failed: {res['error']}")
        entry = {key: float(res[key]) for key in ("ap", "ap_adaptive", "below_chance")}
        if num_classes > 2 and RELABELLED_KEY in res:
            entry["relabelled"] = float(res[RELABELLED_KEY])
        scores[ATTACK_ABBREVIATIONS[name]] = entry
    mp = result["auc"] if num_classes == 2 else result["accuracy"]
    return {
        "setting": setting.key,
        "setting_params": asdict(setting),
        "defence": spec.name,
        "label": spec.label,
        "params": dict(spec.params),
        "seed": seed,
        "num_classes": num_classes,
        "mp": float(mp),
        "accuracy": float(result["accuracy"]),
        "num_test": int(result["num_samples"]),
        "train_loss": [float(v) for v in result["train_loss"]],
        "skipped_batches": int(result["skipped_batches"]),
        "seconds": float(result["seconds"]),
        "autoencoder_seed": autoencoder_seed,
        "autoencoder_epochs": ae_epochs if spec.name in AUTOENCODER_DEFENCES else None,
        "attacks": scores,
    }


def reusable(record: dict[str, Any], spec: DefenceSpec, seed: int, shared_seed: int | None, ae_epochs: int) -> bool:
    """Whether a finished ``record`` of this (setting, defence label, seed) is the training ``run_one`` would do now.

    A label shows some parameters only (``coae`` shows none), and the autoencoder a CoAE/DCAE training used
    depends on ``--shared-autoencoder-for`` (its seed, ``shared_seed``) and on ``--quick`` (its epochs): a record of
    other parameters or of another autoencoder is trained again. Records from before the epochs were kept are
    matched without them.
    """
    if record.get("params") != json.loads(json.dumps(dict(spec.params))):
        return False
    if spec.name not in AUTOENCODER_DEFENCES:
        return True
    expected_seed = seed if shared_seed is None else shared_seed
    epochs = record.get("autoencoder_epochs", ae_epochs)
    return bool(record.get("autoencoder_seed") == expected_seed and epochs == ae_epochs)
