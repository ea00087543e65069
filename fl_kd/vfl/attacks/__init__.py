"""Label-inference attacks run by a feature party of split (vertical) training, and their registry.

Each attack is a :class:`~fl_kd.vfl.hooks.FeaturePartyAttack` in its own module; configs refer to attacks by
name through :func:`build_attack`. All of them are label inference ("LI") attacks in VFLAIR's taxonomy.
"""

from __future__ import annotations

from typing import Any

from fl_kd.vfl.attacks.batch_label_inference import BatchLabelInference
from fl_kd.vfl.attacks.direct_label_inference import DirectLabelInference
from fl_kd.vfl.attacks.direction_scoring import DirectionScoring
from fl_kd.vfl.attacks.model_completion import PassiveModelCompletion
from fl_kd.vfl.attacks.norm_scoring import NormScoring
from fl_kd.vfl.hooks import FeaturePartyAttack

__all__ = [
    "BatchLabelInference",
    "DirectLabelInference",
    "DirectionScoring",
    "NormScoring",
    "PassiveModelCompletion",
    "attack_class",
    "available_attacks",
    "build_attack",
]

_ATTACKS: dict[str, type[FeaturePartyAttack]] = {
    cls.name: cls
    for cls in (
        FeaturePartyAttack,
        DirectLabelInference,
        NormScoring,
        DirectionScoring,
        BatchLabelInference,
        PassiveModelCompletion,
    )
}


def available_attacks() -> list[str]:
    """Names accepted by :func:`build_attack` (``"none"`` observes nothing)."""
    return sorted(_ATTACKS)


def attack_class(name: str) -> type[FeaturePartyAttack]:
    """The attack class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; known attacks: {available_attacks()}") from None


def build_attack(name: str, **params: Any) -> FeaturePartyAttack:
    """Instantiate the attack ``name`` with its constructor parameters ``params``.

    Example: ``build_attack("batch_label_inference", top="linear", steps=500)``.
    """
    cls = attack_class(name)
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for attack {name!r}: {error}") from error
