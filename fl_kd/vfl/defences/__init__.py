"""Label defences for vertical FL, each a ``LabelDefence`` on the fixed hooks, and a registry by name."""

from __future__ import annotations

from typing import Any

from fl_kd.registry import Registry
from fl_kd.vfl.defences.coae import (
    CoAEDefence,
    ConfusionalAutoencoder,
    check_autoencoder,
    load_autoencoder,
    load_or_train_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from fl_kd.vfl.defences.coae_noise import CoAENoiseDefence
from fl_kd.vfl.defences.dcae import DCAEDefence, DiscreteSGDDefence, GradientDiscretiser, discretise
from fl_kd.vfl.defences.marvell import MarvellDefence
from fl_kd.vfl.defences.mid import MIDDefence, VariationalBottleneck
from fl_kd.vfl.defences.noise import GaussianNoiseDefence, LaplaceNoiseDefence
from fl_kd.vfl.defences.randomised_label import RandomisedLabelDefence
from fl_kd.vfl.defences.sparsification import GradientSparsificationDefence, sparsify_rows
from fl_kd.vfl.hooks import LabelDefence

DEFENCES: Registry[type[LabelDefence]] = Registry("defence")
"""Defence classes by config name (``"cae"`` is the paper's other name for CoAE)."""
for _name, _cls in (
    ("none", LabelDefence),
    ("coae", CoAEDefence),
    ("cae", CoAEDefence),
    ("dcae", DCAEDefence),
    ("discrete_sgd", DiscreteSGDDefence),
    ("gaussian", GaussianNoiseDefence),
    ("laplace", LaplaceNoiseDefence),
    ("sparsification", GradientSparsificationDefence),
    ("mid", MIDDefence),
    ("coae_noise", CoAENoiseDefence),
    ("randomised_label", RandomisedLabelDefence),
    ("marvell", MarvellDefence),
):
    DEFENCES.add(_name, _cls)


def available_defences() -> list[str]:
    """Names accepted by ``build_defence``."""
    return sorted(DEFENCES)


def defence_class(name: str) -> type[LabelDefence]:
    """The defence class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    return DEFENCES.get(name)


def build_defence(name: str, **params: Any) -> LabelDefence:
    """Build a defence from its config name and keyword parameters.

    Example: ``build_defence("gaussian", scale=0.1)``. Unknown names and parameters raise ``ValueError``.
    """
    cls = defence_class(name)
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for defence {name!r}: {error}") from error


__all__ = [
    "DEFENCES",
    "CoAEDefence",
    "CoAENoiseDefence",
    "ConfusionalAutoencoder",
    "DCAEDefence",
    "DiscreteSGDDefence",
    "GaussianNoiseDefence",
    "GradientDiscretiser",
    "GradientSparsificationDefence",
    "LaplaceNoiseDefence",
    "MarvellDefence",
    "MIDDefence",
    "RandomisedLabelDefence",
    "VariationalBottleneck",
    "available_defences",
    "build_defence",
    "defence_class",
    "check_autoencoder",
    "discretise",
    "load_autoencoder",
    "load_or_train_autoencoder",
    "save_autoencoder",
    "sparsify_rows",
    "train_autoencoder",
]
