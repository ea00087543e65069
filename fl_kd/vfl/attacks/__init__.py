"""Label-inference attacks run by a feature party of split (vertical) training, and their registry.

Each attack is a :class:`~fl_kd.vfl.hooks.FeaturePartyAttack` in its own module; configs refer to attacks by
name through :func:`build_attack`. All of them are label inference ("LI") attacks in VFLAIR's taxonomy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fl_kd.registry import Registry
from fl_kd.vfl.attacks.adaptive_label_inference import AdaptiveLabelInference
from fl_kd.vfl.attacks.batch_label_inference import BatchLabelInference
from fl_kd.vfl.attacks.direct_label_inference import DirectLabelInference
from fl_kd.vfl.attacks.direction_scoring import DirectionScoring
from fl_kd.vfl.attacks.gradient_clustering import GradientClustering
from fl_kd.vfl.attacks.model_completion import PassiveModelCompletion
from fl_kd.vfl.attacks.norm_scoring import NormScoring
from fl_kd.vfl.attacks.observation import ObservationLog
from fl_kd.vfl.hooks import FeaturePartyAttack

__all__ = [
    "AdaptiveLabelInference",
    "BatchLabelInference",
    "DirectLabelInference",
    "DirectionScoring",
    "GradientClustering",
    "NormScoring",
    "PassiveModelCompletion",
    "attack_class",
    "available_attacks",
    "ATTACKS",
    "ObservationLog",
    "build_attack",
    "build_attacks",
    "score_attacks",
]

ATTACKS: Registry[type[FeaturePartyAttack]] = Registry("attack")
"""Attack classes by config name (each class's ``name``)."""
for _cls in (
    FeaturePartyAttack,
    DirectLabelInference,
    NormScoring,
    DirectionScoring,
    BatchLabelInference,
    PassiveModelCompletion,
    AdaptiveLabelInference,
    GradientClustering,
):
    ATTACKS.add(_cls.name, _cls)


def available_attacks() -> list[str]:
    """Names accepted by :func:`build_attack` (``"none"`` observes nothing)."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[FeaturePartyAttack]:
    """The attack class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    return ATTACKS.get(name)


def build_attack(name: str, **params: Any) -> FeaturePartyAttack:
    """Instantiate the attack ``name`` with its constructor parameters ``params``.

    Example: ``build_attack("batch_label_inference", top="linear", steps=500)``.
    """
    cls = attack_class(name)
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for attack {name!r}: {error}") from error


def build_attacks(params_by_name: Mapping[str, Mapping[str, Any]]) -> dict[str, FeaturePartyAttack]:
    """Fresh attacks ``{name: attack}`` from a config's ``attack`` mapping (name -> parameters), in its order."""
    return {name: build_attack(name, **dict(params)) for name, params in params_by_name.items()}


def score_attacks(attacks: Mapping[str, FeaturePartyAttack], labels: Tensor) -> dict[str, Any]:
    """Each attack's result against the true training labels ``(N,)``, by the name it runs under.

    An attack that does not apply to the run (e.g. a binary-only scoring attack on ten classes) reports its
    reason under ``error`` instead of stopping the others.
    """
    results: dict[str, Any] = {}
    for name, attack in attacks.items():
        try:
            results[name] = attack.result(labels)
        except ValueError as err:
            results[name] = {"attack": name, "error": str(err)}
    return results
