"""What the VFL benchmark runs: settings (dataset x top model), defences with their parameters, attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ATTACK_ABBREVIATIONS: dict[str, str] = {
    "direct_label_inference": "DLI",
    "norm_scoring": "NS",
    "direction_scoring": "DS",
    "batch_label_inference": "BLI",
    "passive_model_completion": "PMC",
    "adaptive_label_inference": "ALI",
    "gradient_clustering": "GC",
}
GRADIENT_ATTACKS = ("DLI", "NS", "DS", "BLI", "ALI", "GC")
"""Attacks that read the gradients sent during training; PMC reads the trained bottom model instead."""

NOISE_DEFENCES = ("gaussian", "laplace")
CONFUSION_DEFENCES = ("coae", "dcae")
AUTOENCODER_DEFENCES = (*CONFUSION_DEFENCES, "coae_noise")
"""Defences that load the shared CoAE autoencoder of ``(C, seed)``."""
DEFENCE_NAMES = (
    "none",
    "coae",
    "dcae",
    "gaussian",
    "laplace",
    "sparsification",
    "discrete_sgd",
    "mid",
    "coae_noise",
    "randomised_label",
    "marvell",
)
DEFAULT_NOISE_SCALES = (0.001, 0.003, 0.01, 0.03, 0.1)
RELATIVE_NOISE_SCALES = (5.0, 10.0, 15.0)
"""Gaussian noise relative to each gradient row (``relative=True``): ratios of the noise's norm to the row's."""


def _name_and_params(row: Any) -> tuple[str, dict[str, Any]]:
    """A ``DefenceSpec``'s or a summary row's defence name and parameters."""
    return (row.name, dict(row.params)) if isinstance(row, DefenceSpec) else (row["defence"], row["params"])


def in_noise_sweep(row: Any, noise: str) -> bool:
    """Whether a spec or a summary row is in the fixed-scale sweep of ``noise`` (relative noise is a sweep apart)."""
    name, params = _name_and_params(row)
    return name == noise and not params.get("relative")


def is_relative_noise(row: Any) -> bool:
    """Whether a spec or a summary row is Gaussian noise relative to each row's norm."""
    name, params = _name_and_params(row)
    return name == "gaussian" and bool(params.get("relative"))


@dataclass(frozen=True)
class Setting:
    """One dataset with one top model and the training settings shared by every defence on it.

    Attributes
    ----------
    dataset : str
        Name for ``fl_kd.data.load_dataset``.
    top : str
        ``"sum"`` (non-trainable sum of party logits; needed by direct label inference) or ``"mlp"``
        (trainable linear head over 16-dim embeddings).
    epochs, batch_size : int
    lr : float
        Adam learning rate of every party.
    bottom_hidden : tuple[int, ...]
        Hidden widths of both bottom MLPs.
    max_train_samples, max_test_samples : int or None
        Seeded subsamples (None: the whole split).
    """

    dataset: str
    top: str
    epochs: int
    batch_size: int
    lr: float
    bottom_hidden: tuple[int, ...] = (64,)
    max_train_samples: int | None = None
    max_test_samples: int | None = None

    @property
    def key(self) -> str:
        """``dataset/top``, the name of the setting in records and tables."""
        return f"{self.dataset}/{self.top}"


FULL_SETTINGS: tuple[Setting, ...] = (
    Setting("breast_cancer", "sum", epochs=15, batch_size=32, lr=1e-3),
    Setting("breast_cancer", "mlp", epochs=15, batch_size=32, lr=1e-3),
    Setting("credit", "sum", epochs=10, batch_size=64, lr=1e-3),
    Setting("credit", "mlp", epochs=10, batch_size=64, lr=1e-3),
    Setting("fashion_mnist", "sum", epochs=10, batch_size=128, lr=1e-3, bottom_hidden=(128,), max_train_samples=10_000),
)


def quick_settings(settings: Iterable[Setting]) -> list[Setting]:
    """The same settings, shrunk to one or two epochs on at most 2000/1000 samples (an end-to-end check)."""
    return [
        Setting(
            s.dataset,
            s.top,
            epochs=min(s.epochs, 2),
            batch_size=s.batch_size,
            lr=s.lr,
            bottom_hidden=s.bottom_hidden,
            max_train_samples=2000,
            max_test_samples=1000,
        )
        for s in settings
    ]


COAE_ENTROPY_WEIGHT = 2.0
"""λ of every CoAE/DCAE autoencoder (the weight of the confusion term)."""
COAE_NUM_TRAIN = 30_000
"""Synthetic labels each autoencoder trains on."""


def _clip(params: dict[str, Any]) -> str:
    """The label's suffix: ``, clip c`` for per-row clipping, then `` × row norm`` for noise relative to each row."""
    clip = f", clip {params['clip_norm']:g}" if params.get("clip_norm") is not None else ""
    return clip + (" × row norm" if params.get("relative") else "")


_LABELS: dict[str, Callable[[dict[str, Any]], str]] = {
    "gaussian": lambda p: f"gaussian σ={p['scale']:g}{_clip(p)}",
    "laplace": lambda p: f"laplace b={p['scale']:g}{_clip(p)}",
    "sparsification": lambda p: f"sparsification {100 * p.get('fraction', 0.9):g}%",
    "mid": lambda p: f"mid λ={p.get('weight', 0.01):g}",
    "coae": lambda p: f"coae λ={p.get('entropy_weight', COAE_ENTROPY_WEIGHT):g}",
    "dcae": lambda p: f"dcae λ={p.get('entropy_weight', COAE_ENTROPY_WEIGHT):g}, {p.get('bin_numbers', 12) + 1} levels",
    "coae_noise": lambda p: f"coae_noise σ={p.get('scale', 0.01):g}",
    "randomised_label": lambda p: f"randomised_label ε={p.get('epsilon', 0.5):g}",
    "marvell": lambda p: f"marvell s={p.get('power_ratio', 4.0):g}",
}
"""How a defence's parameters show in its label; a defence without an entry shows its name alone."""


@dataclass(frozen=True)
class DefenceSpec:
    """A defence name with its parameters, as passed to ``fl_kd.vfl.defences.build_defence``."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """Row label in tables and plots, e.g. ``gaussian σ=0.01``."""
        label = _LABELS.get(self.name)
        return label(dict(self.params)) if label is not None else self.name


def defence_grid(
    names: Sequence[str] = DEFENCE_NAMES, noise_scales: Sequence[float] = DEFAULT_NOISE_SCALES
) -> list[DefenceSpec]:
    """Defences in report order; ``none`` is always first because DCS needs MP* from it.

    Every defence keeps its library defaults (no tuning per dataset); only the DP noise gets a sweep of scales,
    so that the MP-vs-AP curve of noise can be compared with the single CoAE point.
    """
    unknown = sorted(set(names) - set(DEFENCE_NAMES))
    if unknown:
        raise ValueError(f"unknown defences {unknown}; choose from {list(DEFENCE_NAMES)}")
    specs: list[DefenceSpec] = [DefenceSpec("none")]
    for name in DEFENCE_NAMES[1:]:
        if name not in names:
            continue
        if name in NOISE_DEFENCES:
            specs.extend(DefenceSpec(name, (("scale", float(s)),)) for s in noise_scales)
            if name == "gaussian":
                specs.extend(DefenceSpec(name, (("relative", True), ("scale", s))) for s in RELATIVE_NOISE_SCALES)
        elif name in AUTOENCODER_DEFENCES:
            specs.append(DefenceSpec(name, (("entropy_weight", COAE_ENTROPY_WEIGHT),)))
        elif name in TUNED:
            specs.extend(DefenceSpec(name, ((key, value),)) for key, value in TUNED[name])
        else:
            specs.append(DefenceSpec(name))
    return specs


TUNED: dict[str, tuple[tuple[str, float], ...]] = {
    "randomised_label": (("epsilon", 0.0), ("epsilon", 0.3), ("epsilon", 0.5), ("epsilon", 0.8)),
    "marvell": (("power_ratio", 16.0), ("power_ratio", 64.0)),
    "mid": (("weight", 0.01), ("weight", 0.1), ("weight", 1.0)),
}
"""Defences against the adaptive attacker, each at a few strengths (the Pareto plot shows which pays off).

``randomised_label`` at ε = 0 draws fake labels independent of the true ones: the feature party learns nothing of the
labels and its logits settle to a constant, so the row is the label party training alone in all but name, the MP a
defence must beat for the federation to be worth it."""


def applies(spec: DefenceSpec, setting: Setting, num_classes: int) -> bool:
    """Whether ``spec`` can run on ``setting``: Marvell is for binary tasks, randomised labels need a sum top."""
    if spec.name == "marvell":
        return num_classes == 2
    if spec.name == "randomised_label":
        return setting.top == "sum"
    return True


def attack_names(num_classes: int, top: str) -> list[str]:
    """Attacks that apply to a setting: DLI and ALI need a sum top, NS and DS a binary task.

    The adaptive pair (ALI, GC) knows the defence and a few labels; the worst case over every attack is the AP that
    counts.
    """
    names = ["direct_label_inference"] if top == "sum" else []
    if num_classes == 2:
        names += ["norm_scoring", "direction_scoring"]
    names += ["batch_label_inference", "passive_model_completion"]
    return names + (["adaptive_label_inference"] if top == "sum" else []) + ["gradient_clustering"]
