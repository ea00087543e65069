"""A label-free screen: clients that agree with the others less where no label checks them than where one does.

A trust score measured on labelled answers rates a client by the samples it knows are labelled, so a client that
knows the defence answers those honestly and poisons the unlabelled ones (``adversary=camouflage``). Canaries
(:mod:`fl_kd.kd.fedgems.canaries`) catch it with hidden labels, at the price of more labels and with the power of
the few canaries a round asks. This screen needs no label: on every sample, a client's answer is compared with the
plurality vote of the *other* clients' answers. Its agreement on the unlabelled samples asked this round is
compared with its agreement on the reliability slice (the held-out labelled samples, which it never trained on
either; the vote there is that of the other clients too). An honest client agrees about as often on both; one
that poisons a share ``p`` of its unlabelled answers agrees less there by about ``p`` times its agreement. Each
round asks thousands of unlabelled samples, so the test sees far more than the canaries do.

The two slices are not treated alike by everybody (clients distil the server's logits on the labelled part every
round, on a subset of the unlabelled part), so every honest client may agree a little less on the unlabelled part.
The screen therefore measures each client's shortfall against the median client's, which an honest majority sets,
and leaves out of the unlabelled teacher a client whose excess exceeds ``z`` standard errors, pooled over rounds.

What it cannot do: an attacker that poisons a small enough share stays below the test's power, and one that lies
on the reliability slice as often as elsewhere is not screened, but then the trust fitted on that slice rates it
as the weaker client it makes itself. Colluders above half of the clients set the vote and the median.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Answers = Mapping[int, tuple[NDArray[Any], NDArray[Any]]]

MIN_OTHERS = 2
"""A sample counts for a client only where at least this many other clients answered it."""


def agreement_with_others(answers: Answers, num_classes: int) -> dict[int, tuple[int, int]]:
    """Per client, ``(agreed, counted)``: on how many of its answers its top class is the other clients' plurality
    vote, out of the samples at least :data:`MIN_OTHERS` others answered (ties go to the lowest class)."""
    clients = sorted(answers)
    if not clients:
        return {}
    union = np.unique(np.concatenate([np.asarray(answers[c][0], dtype=np.int64) for c in clients]))
    votes = np.full((len(clients), union.size), -1, dtype=np.int64)
    for k, client_id in enumerate(clients):
        positions, values = answers[client_id]
        if np.size(positions):
            votes[k, np.searchsorted(union, positions)] = np.asarray(values).argmax(axis=1)
    counts = np.zeros((union.size, num_classes), dtype=np.int64)
    for k in range(len(clients)):
        answered = votes[k] >= 0
        np.add.at(counts, (np.flatnonzero(answered), votes[k, answered]), 1)
    answered_by = (votes >= 0).sum(axis=0)
    out = {}
    for k, client_id in enumerate(clients):
        own = votes[k]
        mine = own >= 0
        others = counts.copy()
        others[np.flatnonzero(mine), own[mine]] -= 1
        counted = mine & (answered_by - 1 >= MIN_OTHERS)
        agreed = counted & (others.argmax(axis=1) == own)
        out[client_id] = (int(agreed.sum()), int(counted.sum()))
    return out


def shortfall(tally: Sequence[int]) -> float:
    """Agreement on the reference minus agreement on the unlabelled answers (both counted must be positive)."""
    ref_agreed, ref_counted, unl_agreed, unl_counted = tally
    return ref_agreed / ref_counted - unl_agreed / unl_counted


def standard_error(tally: Sequence[int]) -> float:
    """Standard error of :func:`shortfall` (two independent proportions); each variance is floored at that of one
    disagreement, so that a slice agreeing everywhere does not claim certainty."""
    ref_agreed, ref_counted, unl_agreed, unl_counted = tally
    variance = 0.0
    for agreed, counted in ((ref_agreed, ref_counted), (unl_agreed, unl_counted)):
        p = agreed / counted
        variance += max(p * (1.0 - p), 1.0 / counted) / counted
    return math.sqrt(variance)


class ConsensusScreen:
    """Each client's running agreement with the other clients, on the reliability slice and on the unlabelled part.

    Parameters
    ----------
    num_classes : int
        Number of classes C.
    z : float
        A client whose shortfall exceeds the median client's by more than ``z`` standard errors is screened out.
    """

    def __init__(self, num_classes: int, z: float) -> None:
        if z <= 0:
            raise ValueError(f"z must be > 0, got {z}")
        if num_classes < 2:
            raise ValueError(f"the consensus screen needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.z = z
        # client id -> [reference agreed, reference counted, unlabelled agreed, unlabelled counted], over rounds
        self.tallies: dict[int, list[int]] = {}

    def screen(self, unlabelled: Answers, reference: Answers) -> tuple[set[int], dict[int, float]]:
        """Add this round's answers to the tallies; the clients screened out, and every answering client's z.

        Parameters
        ----------
        unlabelled : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (unlabelled indices ``(n,)``, logits ``(n, C)``) of this round.
        reference : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (positions ``(m,)``, logits ``(m, C)``) on the reliability slice this round.
        """
        on_unlabelled = agreement_with_others(unlabelled, self.num_classes)
        on_reference = agreement_with_others(reference, self.num_classes)
        for client_id in unlabelled:
            tally = self.tallies.setdefault(client_id, [0, 0, 0, 0])
            now = (*on_reference.get(client_id, (0, 0)), *on_unlabelled.get(client_id, (0, 0)))
            for k, count in enumerate(now):
                tally[k] += count
        evidenced = [c for c in sorted(unlabelled) if self.tallies[c][1] > 0 and self.tallies[c][3] > 0]
        if not evidenced:
            return set(), {c: 0.0 for c in unlabelled}
        median = float(np.median([shortfall(self.tallies[c]) for c in evidenced]))
        scores = {c: 0.0 for c in unlabelled}
        for client_id in evidenced:
            tally = self.tallies[client_id]
            scores[client_id] = (shortfall(tally) - median) / standard_error(tally)
        return {c for c in evidenced if scores[c] > self.z}, scores
