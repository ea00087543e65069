"""Attack results a party sends as JSON, screened before any figure is read: the evaluation harness's last message.

Scoring a label-inference attack needs the attacking party's own figures; they are another party's words, so each
result is checked (:func:`attack_result_problem`) and a refused one becomes :func:`missing_attack`, never a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fl_kd.protocol import ProtocolError, scalar_of
from fl_kd.vfl.protocol import CONFIG, RESULTS

#: Largest attack-results text a party may send (characters); anything longer is refused before it is parsed.
MAX_RESULTS_CHARS = 1_000_000
#: Deepest nesting of mappings and lists an attack result may have (a real one nests three deep).
MAX_RESULTS_DEPTH = 8
#: Figures of an attack result that are rates or ROC-AUCs, wherever they appear in it: each must lie in [0, 1].
UNIT_FIGURES = frozenset(
    {
        "ap",
        "ap_adaptive",
        "below_chance",
        "auc",
        "accuracy",
        "recovery",
        "recovery_up_to_permutation",
        "ap_oracle",
        "known_fit",
    }
)
#: Figures that count training samples: whole numbers from 0 to the number of aligned training samples.
SAMPLE_COUNTS = frozenset({"num_samples", "num_known"})
#: Other counts (epochs, batches): whole numbers, at least 0.
COUNTS = frozenset({"epoch", "epoch_oracle", "averaged_epochs", "num_batches"})


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"a non-finite number ({name})")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"a number beyond float range ({text[:20]})")
    return value


def _figure_problem(value: Any, path: str, num_train: int, depth: int = 0) -> str | None:
    """Why the JSON value ``value`` at ``path`` is no part of an attack result, or None (``attack_result_problem``)."""
    if depth > MAX_RESULTS_DEPTH:
        return f"{path} nests deeper than {MAX_RESULTS_DEPTH} levels"
    if isinstance(value, list):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
        is_number = isinstance(item, int | float) and not isinstance(item, bool)
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where} is {item!r}, not a finite number"
        if key in UNIT_FIGURES and not (is_number and 0.0 <= item <= 1.0):
            return f"{where} is {item!r}, not a number in [0, 1]"
        if key in SAMPLE_COUNTS | COUNTS and not (isinstance(item, int) and not isinstance(item, bool) and item >= 0):
            return f"{where} is {item!r}, not a whole number >= 0"
        if key in SAMPLE_COUNTS and item > num_train:
            return f"{where} is {item}, more than the {num_train} training samples"
        problem = _figure_problem(item, where, num_train, depth + 1)
        if problem is not None:
            return problem
    return None


def attack_result_problem(name: str, result: Any, num_train: int) -> str | None:
    """Why ``result`` is no usable result of attack ``name``, or None.

    Usable: a mapping that names the attack (if it names one) and either reports why the attack does not apply
    (``error``, a string, and nothing else: a figure beside it would be read as scored) or an ``ap``; every rate or
    AUC in it, at any depth, in [0, 1], and every sample count a whole number within ``num_train``.
    """
    if not isinstance(result, dict):
        return f"a {type(result).__name__}, not a mapping"
    if result.get("attack", name) != name:
        return f"it is the result of {result.get('attack')!r}"
    if "error" in result:
        if not isinstance(result["error"], str):
            return "its error is not a string"
        extra = sorted(str(key) for key in result if key not in ("attack", "error"))
        return f"it reports an error and figures {extra[:3]}" if extra else None
    if "ap" not in result:
        return "it reports no ap"
    return _figure_problem(result, name, num_train)


def missing_attack(name: str, reason: str) -> dict[str, Any]:
    """The result of an attack that could not be scored: no figure, only why (``error``)."""
    return {"attack": name, "error": f"not scored: {reason}"}


def decode_attack_results(content: Any, names: Sequence[str], num_train: int) -> tuple[dict[str, Any], list[str]]:
    """The attack results a party sent as JSON (``config.results``), screened per attack.

    Returns each of ``names``'s result, in that order: as sent when :func:`attack_result_problem` finds nothing,
    otherwise :func:`missing_attack` with the reason; and the reasons of every refusal (a result for an attack
    not asked for is dropped and counted there too).

    Raises
    ------
    ProtocolError
        When the reply as a whole is unusable: no text, too long, not strict JSON (NaN, infinities and numbers
        beyond float range included), or not a mapping. The caller then reports every attack as missing.
    """
    text = scalar_of(content, CONFIG, RESULTS)
    if not isinstance(text, str):
        raise ProtocolError("the attacking party sent no attack results")
    if len(text) > MAX_RESULTS_CHARS:
        raise ProtocolError(f"the attack results are {len(text)} characters long, more than {MAX_RESULTS_CHARS}")
    try:
        results = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ProtocolError as err:
        raise ProtocolError(f"the attack results hold {err}") from None
    except (ValueError, RecursionError) as err:
        raise ProtocolError(f"the attack results are not JSON: {type(err).__name__}") from None
    if not isinstance(results, dict):
        raise ProtocolError("the attack results are not a mapping")
    screened: dict[str, Any] = {}
    refused: list[str] = []
    for name in names:
        if name not in results:
            reason = "the attacking party sent no result for it"
        else:
            problem = attack_result_problem(name, results[name], num_train)
            reason = "" if problem is None else f"unusable result: {problem}"
        screened[name] = results[name] if not reason else missing_attack(name, reason)
        if reason:
            refused.append(f"{name}: {reason}")
    refused.extend(f"{extra}: a result for an attack not asked for" for extra in sorted(set(results) - set(names)))
    return screened, refused
