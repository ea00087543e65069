"""Screening of client answers before any of their values reach the server model.

A client may be buggy, stale or malicious. Every answer is checked against what the server asked for; an answer
that fails is dropped for the round with a reason, and the reason is counted, so bad input never crashes the server
and never silently reaches a weight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.training import packed_size

ALLOWED_LOGITS_DTYPES: tuple[str, ...] = ("float16", "float32", "uint8")

#: Default bound on the absolute value of every float a client sends (logits, weights): far above anything a
#: trained model produces, far below what overflows a softmax, an entropy or a float32 average.
DEFAULT_MAX_ABS_VALUE = 1e4


def check_bounded(arrays: Mapping[str, Any], max_abs: float = DEFAULT_MAX_ABS_VALUE) -> str | None:
    """Why an answer's float arrays cannot be used (NaN, inf, or a value beyond ``max_abs``), or None.

    Non-float arrays (positions, counts) are the algorithm's to check.
    """
    for name, value in arrays.items():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            reason = _bound_problem(value, max_abs)
            if reason is not None:
                return f"{name} {reason}"
    return None


def _bound_problem(value: NDArray[Any], max_abs: float) -> str | None:
    if not np.isfinite(value).all():
        return "contains NaN or inf"
    if value.size and float(np.abs(value.astype(np.float64)).max()) > max_abs:
        return f"has a value beyond the bound {max_abs:g}"
    return None


def check_client_answer(
    asked: NDArray[np.int64],
    positions: Any,
    logits: Any,
    num_classes: int,
    max_abs: float = DEFAULT_MAX_ABS_VALUE,
    wire: str | None = None,
) -> str | None:
    """Return why an answer must be rejected, or None when it is usable.

    Parameters
    ----------
    asked : ndarray
        ``(n,)`` transfer positions the server asked this client for.
    positions : Any
        ``(n,)`` positions the client says it answered; must equal ``asked`` exactly.
    logits : Any
        ``(n, C)`` logits (see :func:`check_answer_logits`).
    num_classes : int
        C.
    max_abs : float (default: :data:`DEFAULT_MAX_ABS_VALUE`)
        Bound on every logit's absolute value.
    wire : str | None (default: None)
        The wire dtype the server asked for (``strategy.logits_dtype``); None takes any of them.
    """
    if not isinstance(positions, np.ndarray) or not isinstance(logits, np.ndarray):
        return "missing positions or logits"
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        return f"positions must be a 1-D integer array, got {positions.dtype} {positions.shape}"
    if positions.shape != asked.shape or not np.array_equal(positions, asked):
        return "positions differ from the positions asked for"
    return check_answer_logits(asked.size, logits, num_classes, max_abs, wire)


def check_answer_logits(
    num_asked: int,
    logits: Any,
    num_classes: int,
    max_abs: float = DEFAULT_MAX_ABS_VALUE,
    wire: str | None = None,
) -> str | None:
    """Why logits answering ``num_asked`` transfer samples (in the order asked) must be rejected, or None.

    ``(num_asked, C)``, a wire dtype of :data:`ALLOWED_LOGITS_DTYPES` (``wire``, the one asked, when given: raw
    logits and quantised log-probabilities must not meet in one fusion), and floats finite and at most ``max_abs``
    (every uint8 code is a valid quantised log-probability; uint5 codes come packed, 1-D, in
    :func:`~fl_kd.kd.training.packed_size` bytes).
    """
    if not isinstance(logits, np.ndarray):
        return "missing logits"
    if logits.dtype.name not in ALLOWED_LOGITS_DTYPES:
        return f"logits dtype {logits.dtype} is not one of {', '.join(ALLOWED_LOGITS_DTYPES)}"
    sent = "uint5" if logits.dtype == np.uint8 and logits.ndim == 1 else logits.dtype.name
    if wire is not None and sent != wire:
        return f"logits sent as {sent}, asked as {wire}"
    if logits.dtype == np.uint8 and logits.ndim == 1:
        expected = packed_size(num_asked, num_classes)
        return None if logits.size == expected else f"packed uint5 logits of {logits.size} bytes != expected {expected}"
    if logits.shape != (num_asked, num_classes):
        return f"logits shape {logits.shape} != expected {(num_asked, num_classes)}"
    if logits.dtype == np.uint8:
        return None
    reason = _bound_problem(logits, max_abs)
    return None if reason is None else f"logits {reason}"


@dataclass
class ScreeningReport:
    """Which answers were kept and why the others were dropped, for one round."""

    accepted: list[int] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    missing: list[int] = field(default_factory=list)

    @property
    def num_rejected(self) -> int:
        """Answers dropped for any reason (missing clients not included)."""
        return sum(self.rejected.values())

    def reject(self, reason: str) -> None:
        """Count one dropped answer."""
        self.rejected[reason] += 1


def find_duplicates(client_ids: Iterable[int]) -> set[int]:
    """Client ids that answered more than once: all their answers are dropped, since none can be trusted."""
    counts = Counter(client_ids)
    return {client_id for client_id, count in counts.items() if count > 1}
