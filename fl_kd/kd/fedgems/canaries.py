"""Canaries: labelled samples the server hides in the unlabelled part, to catch clients that lie only where unchecked.

A trust score measured on labelled answers (per-class precision, the learned combiner) rates a client by the samples
it knows are labelled. A client that knows the defence answers those honestly and poisons the unlabelled ones
(``adversary=camouflage``): it is rated perfect and trusted most exactly where it lies. Canaries take that
knowledge away. The server holds the labels of a set of samples *of the unlabelled part*; they are queried like
every other unlabelled sample (drawn into a round's subset at the same rate, at positions in the same range), and
never distilled. The set is drawn from the run's seed and a secret (:func:`canary_secret`): a digest of the
server's key, ``FL_KD_SERVER_KEY``, set where the ServerApp runs. Every client has the seed (the run config) and
the public dataset the transfer set and its labels come from, so a set drawn from those alone would be one the
attacker recomputes and answers honestly; with the key, no client can tell the canaries apart. A client's
accuracy on the canaries it answered, pooled over the rounds so far, is compared with its accuracy on the
reliability slice (the held-out labelled samples, which it never trained on either): an honest client is about as
accurate on both, a client that poisons a share
``p`` of its unlabelled answers is worse on the canaries by about ``p`` times its accuracy. One whose shortfall
exceeds ``z`` standard errors of a two-proportion test is left out of the unlabelled teacher (and of its fit).

Pooling dilutes a liar that answers honestly for rounds and then lies (``adversary.from_round``): two honest rounds
and one lying one read as a third of its shortfall. With ``burst_z`` the screen also scans every window of the
latest rounds (the last one, the last two, ...), each window's canaries against the same window's slice, so that
the reference never lags the clients' learning; a client whose shortfall in any window exceeds ``burst_z`` is left
out too. Each window is one more test of every honest client, and a round holds only the canaries of its subset
(about 100 in the robustness benchmark), so a threshold is judged by the honest clients it leaves out as well as by
the liars it catches.

What it cannot do: an attacker who poisons only a small share of its unlabelled answers stays below the test's
power and keeps its trust. In a product of experts each of those lies can still veto the truth, so its damage is
bounded by that share only with the combiner's ``prob_floor`` and ``trim`` (:mod:`fl_kd.kd.fedgems.combiner`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.config import ConfigError
from fl_kd.kd.seeding import SERVER_ID, derive_seed, torch_generator
from fl_kd.secret import SERVER_KEY_ENV, secret_words, server_key

Answers = Mapping[int, tuple[NDArray[Any], NDArray[Any]]]


def canary_secret() -> int:
    """The key of the canary draw, from the server's key (:func:`fl_kd.secret.server_key`), which no client holds.

    Raises
    ------
    ConfigError
        ``FL_KD_SERVER_KEY`` is not set: no draw would be hidden from the clients.
    """
    secret = server_key(b"canaries")
    if secret is None:
        raise ConfigError(
            f"strategy.canaries needs the server's key: set {SERVER_KEY_ENV} (any string, kept from the clients) "
            "where the ServerApp runs. Every client holds the run config and the public dataset of the transfer "
            "set, so canaries drawn from those alone are ones a liar recomputes and answers honestly"
        )
    return secret


def canary_indices(num_unlabelled: int, count: int, seed: int, secret: int) -> NDArray[np.int64]:
    """Sorted unlabelled indices of the ``count`` canaries, drawn from ``(seed, "canaries", secret)``."""
    if not 0 <= count < num_unlabelled:
        raise ValueError(f"canaries must be in [0, {num_unlabelled}) (the unlabelled part's size), got {count}")
    key = derive_seed(seed, SERVER_ID, "canaries", *secret_words(secret))
    order = torch.randperm(num_unlabelled, generator=torch_generator(key))
    return np.sort(order[:count].numpy()).astype(np.int64)


def shortfall_z(reference_right: int, reference_seen: int, canary_right: int, canary_seen: int) -> float:
    """z statistic of (reference accuracy - canary accuracy), pooled two-proportion test; 0 without evidence."""
    if reference_seen == 0 or canary_seen == 0:
        return 0.0
    gap = reference_right / reference_seen - canary_right / canary_seen
    pooled = (reference_right + canary_right) / (reference_seen + canary_seen)
    variance = pooled * (1.0 - pooled) * (1.0 / reference_seen + 1.0 / canary_seen)
    if variance <= 0.0:  # both all right or all wrong: no shortfall
        return 0.0
    return gap / math.sqrt(variance)


class CanaryScreen:
    """The canary set of one server and each client's running tallies on it and on the reliability slice.

    Parameters
    ----------
    labels : Tensor
        ``(M,)`` labels of the whole unlabelled part; only the canaries' are ever read.
    count : int
        Number of canaries.
    seed : int
        Base seed of the run.
    secret : int
        The server's secret (:func:`canary_secret`), which keys the draw with ``seed``.
    z : float
        A client whose canary accuracy falls short of its reliability-slice accuracy by more than ``z`` standard
        errors, both pooled over the rounds so far, is screened out.
    burst_z : float (default: 0.0)
        Also one whose shortfall in a window of its latest rounds, shorter than all of them, exceeds ``burst_z``
        (0: off).
    """

    def __init__(self, labels: Tensor, count: int, seed: int, secret: int, z: float, burst_z: float = 0.0) -> None:
        if z <= 0 or burst_z < 0:
            raise ValueError(f"z must be > 0 and burst_z >= 0, got {z} and {burst_z}")
        self.z, self.burst_z = z, burst_z
        indices = canary_indices(int(labels.shape[0]), count, seed, secret)
        self.mask = np.zeros(int(labels.shape[0]), dtype=bool)
        self.mask[indices] = True
        self.labels = np.full(int(labels.shape[0]), -1, dtype=np.int64)
        self.labels[indices] = labels.numpy().astype(np.int64)[indices]  # the server's own secret labels
        # client id -> [reference right, reference seen, canary right, canary seen], over the rounds so far
        self.tallies: dict[int, list[int]] = {}
        # client id -> the same four counts of each round it answered in, oldest first (for the burst test)
        self.rounds: dict[int, list[tuple[int, int, int, int]]] = {}
        self.burst_scores: dict[int, float] = {}  # this round's burst_score per answering client (with burst_z)

    def strip(self, answers: Answers) -> dict[int, tuple[NDArray[Any], NDArray[Any]]]:
        """Each client's unlabelled answers without the canaries (never distilled)."""
        out = {}
        for client_id, (positions, values) in answers.items():
            keep = ~self.mask[positions]
            out[client_id] = (positions[keep], values[keep])
        return out

    def screen(
        self, unlabelled: Answers, reference: Mapping[int, tuple[NDArray[np.int64], NDArray[np.int64]]]
    ) -> tuple[set[int], dict[int, float]]:
        """Add this round's answers to the tallies; the clients screened out, and every client's z.

        Parameters
        ----------
        unlabelled : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (unlabelled indices ``(n,)``, logits ``(n, C)``) of this round.
        reference : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (predicted classes, true classes) on its reliability-slice answers of this round.
        """
        flagged, scores = set(), {}
        self.burst_scores = {}
        for client_id in sorted(unlabelled):
            positions, values = unlabelled[client_id]
            on_canary = self.mask[positions]
            predicted = np.asarray(values)[on_canary].argmax(axis=1) if on_canary.any() else np.zeros(0, np.int64)
            reference_predicted, reference_true = reference.get(client_id, (np.zeros(0), np.zeros(0)))
            now = (
                int(np.sum(reference_predicted == reference_true)),
                int(np.size(reference_true)),
                int(np.sum(predicted == self.labels[positions[on_canary]])),
                int(on_canary.sum()),
            )
            tally = self.tallies.setdefault(client_id, [0, 0, 0, 0])
            tally[:] = [total + count for total, count in zip(tally, now, strict=True)]
            self.rounds.setdefault(client_id, []).append(now)
            scores[client_id] = shortfall_z(*tally)
            if self.burst_z:
                self.burst_scores[client_id] = self.burst_score(client_id)
            if scores[client_id] > self.z or self.burst_scores.get(client_id, 0.0) > self.burst_z > 0:
                flagged.add(client_id)
        return flagged, scores

    def burst_score(self, client_id: int) -> float:
        """The largest shortfall z of ``client_id`` over the windows of its latest rounds shorter than all of them."""
        history = self.rounds.get(client_id, [])
        window, best = [0, 0, 0, 0], 0.0
        for counts in reversed(history[1:]):  # the last round, the last two, ..., all but the first
            window = [total + count for total, count in zip(window, counts, strict=True)]
            best = max(best, shortfall_z(*window))
        return best
