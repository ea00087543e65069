"""VFLAIR's trade-off metrics for vertical FL defences: MP, AP, DCS, T-DCS and C-DCS.

Zou, Liu et al., "VFLAIR: A Research Library and Benchmark for Vertical Federated Learning", ICLR 2024
(``src/metrics`` of FLAIR-THU/VFLAIR). A defence is scored by how far it sits from the ideal point
(AP = AP*, MP = MP*) in the attack-performance / main-task-performance plane:

    DCS = 1 / (1 + sqrt((1 - beta) * max(AP - AP*, 0)^2 + beta * max(MP* - MP, 0)^2))

with beta = 0.5, AP* = 0 and MP* the main-task accuracy of vanilla VFL in the same setting. T-DCS averages DCS
over the attacks of one type (LI label inference, FR feature reconstruction, TB targeted backdoor, NTB
non-targeted backdoor); C-DCS is a weighted mean of the T-DCS values.

The adaptive-attacker helpers are ours: an attacker who knows the defence in use can flip a binary guess, so a
recovery rate far *below* chance leaks as much as one far above it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

ATTACK_TYPES: tuple[str, ...] = ("LI", "FR", "TB", "NTB")


def dcs(ap: float, mp: float, mp_star: float, ap_star: float = 0.0, beta: float = 0.5) -> float:
    """Defence capability score of one (defence, attack) pair, in ``(0, 1]``; higher is better.

    Parameters
    ----------
    ap : float
        Attack performance under the defence (recovery rate, AUC, backdoor success, ...).
    mp : float
        Main-task performance (test accuracy) under the defence.
    mp_star : float
        Main-task performance of vanilla VFL without defence; only an MP *drop* below it is penalised.
    ap_star : float (default: 0.0)
        Ideal attack performance; only AP *above* it is penalised.
    beta : float (default: 0.5)
        Weight of the utility term; ``1 - beta`` weights the privacy term.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    privacy_gap = max(ap - ap_star, 0.0)
    utility_gap = max(mp_star - mp, 0.0)
    return 1.0 / (1.0 + math.sqrt((1.0 - beta) * privacy_gap**2 + beta * utility_gap**2))


def t_dcs(dcs_values: Sequence[float]) -> float:
    """Type-level DCS: the mean DCS over the attacks of one type."""
    if len(dcs_values) == 0:
        raise ValueError("t_dcs needs at least one DCS value")
    return float(np.mean(np.asarray(dcs_values, dtype=np.float64)))


def attack_type(attack: str) -> str:
    """The VFLAIR attack type (one of ``ATTACK_TYPES``) of a registered attack name."""
    # Imported here because the attacks import this module for ``attack_performance``.
    from fl_kd.vfl.attacks import attack_class

    kind = getattr(attack_class(attack), "attack_type", None)
    if kind not in ATTACK_TYPES:
        raise ValueError(f"attack {attack!r} has no VFLAIR attack type")
    return str(kind)


def t_dcs_by_type(dcs_by_attack: Mapping[str, float]) -> dict[str, float]:
    """Group per-attack DCS values ``{attack name: DCS}`` by attack type and average each group."""
    groups: dict[str, list[float]] = {}
    for attack, value in dcs_by_attack.items():
        groups.setdefault(attack_type(attack), []).append(value)
    return {kind: t_dcs(values) for kind, values in groups.items()}


def c_dcs(t_dcs_by_type: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Comprehensive DCS: the weighted mean of T-DCS values.

    Parameters
    ----------
    t_dcs_by_type : Mapping[str, float]
        T-DCS per attack type present in the evaluation, e.g. ``{"LI": 0.8}``.
    weights : Mapping[str, float] | None (default: None)
        Weight per type, summing to 1 over the types present; ``None`` weights the present types equally
        (VFLAIR's released script uses equal weights).
    """
    if not t_dcs_by_type:
        raise ValueError("c_dcs needs at least one T-DCS value")
    unknown = set(t_dcs_by_type) - set(ATTACK_TYPES)
    if unknown:
        raise ValueError(f"unknown attack types {sorted(unknown)}; expected some of {ATTACK_TYPES}")
    if weights is None:
        return float(np.mean(list(t_dcs_by_type.values())))
    missing = set(t_dcs_by_type) - set(weights)
    if missing:
        raise ValueError(f"weights lack the attack types {sorted(missing)}")
    total = sum(weights[kind] for kind in t_dcs_by_type)
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"weights of the types present must sum to 1, got {total}")
    return float(sum(weights[kind] * value for kind, value in t_dcs_by_type.items()))


def defence_scores(results: Mapping[str, Any], mp_star: float, beta: float = 0.5) -> dict[str, Any]:
    """DCS of every scored attack of a run's results (raw and adaptive AP), T-DCS per attack type and C-DCS.

    ``t_dcs`` and ``c_dcs`` score the adaptive AP, the attacker who knows the defence (a recovery flipped below
    chance by the defence counts as the leak it is); ``t_dcs_raw`` and ``c_dcs_raw`` score the raw AP, as VFLAIR
    does, for comparison with its tables. ``results`` holds ``mp`` and ``attacks`` (name -> result); an attack that
    reported an ``error`` instead of an ``ap`` is left out.
    """
    per_attack = {}
    for name, result in results["attacks"].items():
        if "ap" in result:
            per_attack[name] = {
                "dcs": dcs(result["ap"], results["mp"], mp_star, beta=beta),
                "dcs_adaptive": dcs(result["ap_adaptive"], results["mp"], mp_star, beta=beta),
            }
    scores: dict[str, Any] = {"per_attack": per_attack}
    if per_attack:
        adaptive = t_dcs_by_type({name: value["dcs_adaptive"] for name, value in per_attack.items()})
        raw = t_dcs_by_type({name: value["dcs"] for name, value in per_attack.items()})
        scores.update(t_dcs=adaptive, c_dcs=c_dcs(adaptive), t_dcs_raw=raw, c_dcs_raw=c_dcs(raw))
    return scores


def worst_case_ap(attack_results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The AP that counts for a defence: the worst case (highest adaptive AP) over an attack suite.

    Parameters
    ----------
    attack_results : Mapping[str, Mapping[str, Any]]
        Each attack's result by name (:func:`fl_kd.vfl.attacks.score_attacks`); an attack that reported an
        ``error`` instead of an AP is left out.

    Returns
    -------
    dict[str, Any]
        ``ap_worst_case`` (the highest ``ap_adaptive``, or ``ap`` where an attack reports no adaptive figure) and
        ``ap_worst_case_attack`` (the attack that reached it, the first in order on a tie); both None when no
        attack was scored.
    """
    worst: tuple[float, str] | None = None
    for name, result in attack_results.items():
        ap = result.get("ap_adaptive", result.get("ap"))
        if "error" in result or isinstance(ap, bool) or not isinstance(ap, (int, float)) or not math.isfinite(ap):
            continue  # unscored, or no real number: never a worst case
        if worst is None or float(ap) > worst[0]:
            worst = (float(ap), name)
    if worst is None:
        return {"ap_worst_case": None, "ap_worst_case_attack": None}
    return {"ap_worst_case": worst[0], "ap_worst_case_attack": worst[1]}


def adaptive_ap(ap: float, num_classes: int) -> float:
    """Attack performance of an attacker who knows the defence and may invert its guesses.

    For a binary task a recovery rate ``r`` (or an AUC) is as informative as ``1 - r``, since the attacker can
    flip every guess, so the adaptive AP is ``max(r, 1 - r)``. For more classes there is no such obvious
    adaptation and the AP is unchanged; ``below_chance`` reports the leak of a rate pushed below chance.
    """
    _check_num_classes(num_classes)
    return max(ap, 1.0 - ap) if num_classes == 2 else ap


def below_chance(ap: float, num_classes: int) -> float:
    """How far a recovery rate lies below random guessing: ``max(0, 1/C - r)``."""
    _check_num_classes(num_classes)
    return max(0.0, 1.0 / num_classes - ap)


def attack_performance(ap: float, num_classes: int) -> dict[str, float]:
    """The raw AP with its adaptive counterpart and below-chance gap, the figures every attack reports."""
    return {
        "ap": float(ap),
        "ap_adaptive": adaptive_ap(float(ap), num_classes),
        "below_chance": below_chance(float(ap), num_classes),
    }


def main_task_performance(probabilities: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> dict[str, Any]:
    """Main-task performance (MP) of predictions ``(N, C)`` against integer labels ``(N,)``.

    Returns ``accuracy`` and, for a binary task, the ROC-AUC of the positive-class probability.
    """
    probs = _to_numpy(probabilities).astype(np.float64)
    y = _to_numpy(labels).astype(np.int64)
    if probs.ndim != 2 or y.ndim != 1 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities must be (N, C) and labels (N,), got {probs.shape} and {y.shape}")
    if y.size == 0:
        raise ValueError("main_task_performance needs at least one sample")
    result: dict[str, Any] = {"accuracy": float(np.mean(probs.argmax(axis=1) == y))}
    if probs.shape[1] == 2:
        result["auc"] = float(roc_auc_score(y, probs[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    return result


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def _to_numpy(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
