"""What the consensus screen (:mod:`fl_kd.kd.consensus`) counts: per client and answer, whether it agrees with the
other clients' plurality vote, how sure it states itself against its own answers where it is checked, and whether
it raises a class far above what the other clients give it."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.training import confidence

Answers = Mapping[int, tuple[NDArray[Any], NDArray[Any]]]

MIN_OTHERS = 2
"""A sample counts for a client only where at least this many other clients answered it."""

SURE_QUANTILES = (0.2, 0.4, 0.6, 0.8)
"""The confidence test's cuts: at each, the share of a client's answers it states less sure than this quantile of
its own answers on the reference; about that share elsewhere if it is honest."""


def agreement_rows(
    answers: Answers, num_classes: int, voters: Collection[int] | None = None
) -> dict[int, tuple[NDArray[np.bool_], NDArray[np.bool_]]]:
    """Per client and row of its answers, ``(agreed, counted)``: whether its top class is the plurality vote of the
    other ``voters`` (default: every client) there, and whether at least :data:`MIN_OTHERS` of them answered that
    sample (ties go to the lowest class)."""
    if not answers:
        return {}
    clients, voting, union, slots = _layout(answers, voters)
    votes = np.full((len(clients), union.size), -1, dtype=np.int64)
    for k, client_id in enumerate(clients):
        if slots[client_id].size:
            votes[k, slots[client_id]] = np.asarray(answers[client_id][1]).argmax(axis=1)
    counts = np.zeros((union.size, num_classes), dtype=np.int64)
    for row in votes[voting]:
        answered = row >= 0
        np.add.at(counts, (np.flatnonzero(answered), row[answered]), 1)
    voted_by = (votes[voting] >= 0).sum(axis=0)
    out = {}
    for k, client_id in enumerate(clients):
        own = votes[k]
        mine = own >= 0
        others, others_by = counts, voted_by
        if voting[k]:  # its own vote is not part of the vote it is compared with
            others = counts.copy()
            others[np.flatnonzero(mine), own[mine]] -= 1
            others_by = voted_by - mine.astype(np.int64)
        counted = mine & (others_by >= MIN_OTHERS)
        agreed = counted & (others.argmax(axis=1) == own)
        out[client_id] = (agreed[slots[client_id]], counted[slots[client_id]])
    return out


def _layout(
    answers: Answers, voters: Collection[int] | None
) -> tuple[list[int], NDArray[np.bool_], NDArray[np.int64], dict[int, NDArray[np.int64]]]:
    """The clients (sorted), whether each votes, every position any of them answered (sorted), and per client where
    its rows sit among those positions."""
    clients = sorted(answers)
    voting = np.array([voters is None or c in voters for c in clients])
    union = np.unique(np.concatenate([np.asarray(answers[c][0], dtype=np.int64) for c in clients]))
    slots = {c: np.searchsorted(union, np.asarray(answers[c][0], dtype=np.int64)) for c in clients}
    return clients, voting, union, slots


def confidence_strata(reference: NDArray[Any], values: NDArray[Any]) -> NDArray[np.int64]:
    """Per row of ``values``, its stratum ``0 .. len(SURE_QUANTILES)`` of stated confidence: how many of the cuts (the
    :data:`SURE_QUANTILES` of the client's confidence on the ``reference`` rows) it reaches."""
    if reference.shape[0] == 0:
        return np.zeros(values.shape[0], dtype=np.int64)
    cuts = np.quantile(confidence(reference), SURE_QUANTILES)
    return np.searchsorted(cuts, confidence(values), side="right").astype(np.int64)


def unsure_counts(reference_strata: NDArray[np.int64], strata: NDArray[np.int64]) -> list[tuple[int, int, int, int]]:
    """Per cut of :data:`SURE_QUANTILES`, ``(reference unsure, counted, unsure, counted)``: how many rows state a
    confidence below that quantile of the client's own confidence on the reference rows (ties count as sure), from
    the :func:`confidence_strata` of both, in the layout of the agreement tallies, so that :func:`shortfall` is the
    share of its answers it states surer elsewhere than where checked."""
    if reference_strata.size == 0 or strata.size == 0:
        return [(0, 0, 0, 0) for _ in SURE_QUANTILES]
    return [
        (int((reference_strata <= k).sum()), reference_strata.size, int((strata <= k).sum()), strata.size)
        for k in range(len(SURE_QUANTILES))
    ]


RAISE_QUANTILES = (0.2, 0.4, 0.6, 0.8)
"""The raise test's cuts: at each, the share of a client's answers on the reference that lift no class beside their
top one higher above the others' mean than this quantile of its own lifts there; about that share elsewhere if it is
honest. One cut at 0.8 passes colluders that lift every answer up to it (``adversary=skewed_colluders``): the lower
cuts see its lifts move up."""

LOG_PROB_FLOOR = math.log(1e-3)
"""The lowest log-probability the raise test reads: one answer's near-certain "no" moves the others' mean no further
than this, and a lift from below it counts only from it."""


def raise_amounts(
    answers: Answers, num_classes: int, voters: Collection[int] | None = None
) -> dict[int, tuple[NDArray[np.float64], NDArray[np.bool_]]]:
    """Per client and row of its answers, ``(lift, counted)``: how far, in nats, it puts the class it ranks highest
    beside its own top class above the mean log-probability the other ``voters`` (default: every client) give that
    class there, and whether at least :data:`MIN_OTHERS` of them answered that sample.

    In a product of experts a class one client puts near its top counts for that class however the client ranks it:
    colluders that keep their honest top class and lift one other class together carry it wherever the honest
    clients are unsure (``adversary.lie_as=skewed``), and every test of the class a client names passes them.
    """
    out = {}
    for client_id, (others, others_by) in others_mean(answers, num_classes, voters).items():
        own = floored_log_probs(np.asarray(answers[client_id][1], dtype=np.float64))
        above = own - others
        if own.shape[0]:
            above[np.arange(own.shape[0]), own.argmax(axis=1)] = -np.inf
        out[client_id] = (above.max(axis=1, initial=-np.inf), others_by >= MIN_OTHERS)
    return out


def others_mean(
    answers: Answers,
    num_classes: int,
    voters: Collection[int] | None = None,
    of: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
) -> dict[int, tuple[NDArray[np.float64], NDArray[np.int64]]]:
    """Per client and row of its answers, ``(mean, by)``: the mean of ``of`` (default: :func:`floored_log_probs`)
    of the logits ``(n, C)`` that the other ``voters`` (default: every client) give that sample, and how many of
    them answered it (mean 0 where none did)."""
    if not answers:
        return {}
    of = floored_log_probs if of is None else of
    clients, voting, union, slots = _layout(answers, voters)
    log_probs = {c: of(np.asarray(answers[c][1], dtype=np.float64)) for c in clients}
    sums = np.zeros((union.size, num_classes))
    by = np.zeros(union.size, dtype=np.int64)
    for k, client_id in enumerate(clients):
        if voting[k]:
            np.add.at(sums, slots[client_id], log_probs[client_id])
            np.add.at(by, slots[client_id], 1)
    out = {}
    for k, client_id in enumerate(clients):
        slot = slots[client_id]
        others, others_by = sums[slot], by[slot]
        if voting[k]:  # its own answer is not part of the mean it is compared with
            others, others_by = others - log_probs[client_id], others_by - 1
        out[client_id] = (others / np.maximum(others_by, 1)[:, None], others_by)
    return out


def raise_counts(
    reference: tuple[NDArray[np.float64], NDArray[np.bool_]], elsewhere: tuple[NDArray[np.float64], NDArray[np.bool_]]
) -> list[tuple[int, int, int, int]]:
    """Per cut of :data:`RAISE_QUANTILES`, ``(reference kept, counted, kept, counted)`` of one client's
    :func:`raise_amounts` on the reference and elsewhere: how many counted rows lift no higher than that quantile of
    its counted lifts on the reference, in the layout of the agreement tallies (no reference row: nothing counted)."""
    (ref_lift, ref_counted), (lift, counted) = reference, elsewhere
    if not ref_counted.any():
        return [(0, 0, 0, 0) for _ in RAISE_QUANTILES]
    ref_lift, lift = ref_lift[ref_counted], lift[counted]
    return [
        (int((ref_lift <= cut).sum()), ref_lift.size, int((lift <= cut).sum()), lift.size)
        for cut in np.quantile(ref_lift, RAISE_QUANTILES)
    ]


def floored_log_probs(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise log-softmax of ``logits`` ``(n, C)``, no lower than :data:`LOG_PROB_FLOOR`."""
    return np.maximum(log_softmax(logits), LOG_PROB_FLOOR)


def log_softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise log-softmax of ``logits`` ``(n, C)``."""
    if logits.shape[0] == 0:
        return logits
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
