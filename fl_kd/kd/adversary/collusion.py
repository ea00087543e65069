"""Colluding weight attacks: the malicious clients pool their honest updates and all send one crafted update.

A robust rule (median, trimmed mean, Krum) assumes a malicious update stands out from the honest ones. These
attacks know that and stay inside the honest spread, where the rule cannot tell them apart, while pushing every
coordinate the same way:

* ``alie``, "A Little Is Enough" (Baruch et al., NeurIPS 2019): ``mu - z * sigma`` per coordinate, ``mu`` and
  ``sigma`` the mean and standard deviation of the colluders' honest updates, ``z`` the largest shift that a
  majority of the round's answers still straddles (``adversary.z`` sets it).
* ``min_max`` and ``min_sum`` (Shejwalkar and Houmansadr, NDSS 2021): ``mu - gamma * sigma / |sigma|`` with the
  largest ``gamma`` whose update lies no farther from any colluder's honest update than two of those lie from each
  other (``min_max``), or whose summed squared distances to them are no larger than any one of theirs
  (``min_sum``): the attacks those papers found to beat Krum, median and trimmed mean without knowing which.
* ``fltrust_adaptive``, the attacker that knows FLTrust (``strategy.aggregation=fltrust``), which rescales every
  update to the server's length and weighs it by its cosine with the server's update: a reversed update gets no
  weight, so the colluders push across the server's direction instead. Where the server's root data set is the
  labelled transfer set they compute its update as the server does (that set and the run's seed are public); where
  it is the server's own (``transfer.server_private``) they train the same way on the labelled transfer set, data
  from the same distribution; with neither they estimate its direction by the mean of their honest updates. They
  send, at the length of that mean, the update at the angle to the server's direction that moves the fused step
  furthest across it (``cos * sin / (C + m * cos)`` at its largest, ``C`` the honest clients' trust as their own
  updates' cosines suggest). Across it they push against what their honest updates add to the server's (the part of
  their mean across the server's update: what clients know that the root data does not teach), or, with no server
  update to tell it from, along ALIE's ``-sigma``.

Each colluder knows only its own honest update; the attack needs them pooled before any of them answers. The
harness simulates that side channel where the answers meet: :class:`ColludingServer` wraps the server half, reads
the malicious clients' answers alone (never an honest one), rewrites them and hands every answer on, so the
server's fusion never learns who colludes. The colluders' client halves answer honestly (:class:`Colluding`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.adversary.behaviours import _BUFFER_SUFFIXES, _COLLUSION_KEY, ADVERSARIES, Behaviour
from fl_kd.kd.robust_weights import flatten, unflatten
from fl_kd.kd.roles import Arrays, ServerRole, ServerWrapper

if TYPE_CHECKING:
    from fl_kd.kd.fedavg.root import RootUpdate

Vector = NDArray[np.float64]


@dataclass(frozen=True)
class ServerEstimate:
    """What the colluders know of the server's own update this round (FLTrust's; nothing under other rules).

    Attributes
    ----------
    update : (D,) array | None
        The server's update as they compute it: exact where its root data set is public, else an estimate.
    calibration : tuple of two (D,) arrays | None
        Where ``update`` is an estimate, two more from disjoint halves of the same data.
    """

    update: Vector | None = None
    calibration: tuple[Vector, Vector] | None = None


#: ``craft(updates (m, D), num_answers, server) -> update (D,)``: the update every colluder sends
#: (:meth:`Colluding.craft`).
Craft = Callable[[NDArray[np.float64], int, ServerEstimate], Vector]
#: The weights the server's own training makes of the global ``weights`` this round (FLTrust's root update), as the
#: colluders compute it themselves.
ServerTraining = Callable[[Mapping[str, NDArray[Any]]], Mapping[str, NDArray[Any]]]


def alie_z(num_answers: int, num_colluders: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n / 2 + 1) - m`` honest answers must sit beyond the crafted value for a
    majority to straddle it, so ``z = Phi^-1((n - s) / n)``, capped at ``Phi^-1(0.999)`` (about 3.1) where the
    colluders are a majority themselves and the formula no longer bounds them."""
    needed = math.floor(num_answers / 2 + 1) - num_colluders
    share = min((num_answers - needed) / num_answers, 0.999)
    return NormalDist().inv_cdf(share) if share > 0.5 else 0.0


def alie(updates: NDArray[np.float64], num_answers: int, z: float | None) -> Vector:
    """``mu - z * sigma`` over the colluders' honest ``updates`` ``(m, D)`` (``z``: :func:`alie_z` when None)."""
    shift = alie_z(num_answers, updates.shape[0]) if z is None else z
    out: Vector = updates.mean(axis=0) - shift * updates.std(axis=0)
    return out


def _direction(updates: NDArray[np.float64]) -> Vector:
    """The unit perturbation: against the spread (``-sigma``), or against the mean when one colluder has none."""
    spread = updates.std(axis=0)
    direction = spread if np.any(spread > 0) else updates.mean(axis=0)
    norm = float(np.linalg.norm(direction))
    return -direction / norm if norm > 0 else np.zeros_like(direction)


def _largest_gamma(fits: Callable[[float], bool], start: float, steps: int = 40) -> float:
    """The largest ``gamma >= 0`` with ``fits(gamma)`` (monotone), by doubling from ``start`` then bisecting."""
    low, high = 0.0, start
    while fits(high) and high < 1e12:
        low, high = high, 2.0 * high
    for _ in range(steps):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _squared_distances(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pairwise squared distances ``(m, m)`` from the Gram matrix (no ``(m, m, D)`` temporary)."""
    norms = np.square(points).sum(axis=1)
    out: NDArray[np.float64] = np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0)
    np.fill_diagonal(out, 0.0)
    return out


def min_max(updates: NDArray[np.float64]) -> Vector:
    """``mu + gamma * p``: no farther from any honest update of the colluders than their largest pairwise distance."""
    mean, direction = updates.mean(axis=0), _direction(updates)
    bound = float(_squared_distances(updates).max())
    scale = float(np.sqrt(bound)) or 1.0

    def fits(gamma: float) -> bool:
        return float(np.square(mean + gamma * direction - updates).sum(axis=1).max()) <= bound

    return mean + _largest_gamma(fits, scale) * direction


def min_sum(updates: NDArray[np.float64]) -> Vector:
    """``mu + gamma * p``: its squared distances to the colluders' honest updates sum to no more than any one's do."""
    mean, direction = updates.mean(axis=0), _direction(updates)
    bound = float(_squared_distances(updates).sum(axis=1).max())
    scale = float(np.sqrt(bound)) or 1.0

    def fits(gamma: float) -> bool:
        return float(np.square(mean + gamma * direction - updates).sum()) <= bound

    return mean + _largest_gamma(fits, scale) * direction


def _orthogonal_unit(vector: Vector, axis: Vector) -> Vector:
    """``vector``'s component orthogonal to the unit ``axis``, normalised (zero when none)."""
    across = vector - (vector @ axis) * axis
    norm = float(np.linalg.norm(across))
    return across / norm if norm > 0 else np.zeros_like(vector)


#: The cosines with the server's direction that the attacker that knows FLTrust chooses among.
_COSINES = np.linspace(0.01, 0.99, 99)


def _frame(updates: NDArray[np.float64], estimate: Vector | None) -> tuple[Vector, Vector]:
    """The unit axis of the server's direction (``estimate``, or the colluders' mean without one) and the unit
    direction across it to push along: against the colluders' mean's part across ``estimate``, else their spread."""
    mean = updates.mean(axis=0)
    known = estimate is not None and bool(np.any(estimate))
    towards = estimate if known and estimate is not None else mean
    axis = towards / float(np.linalg.norm(towards))
    across = _orthogonal_unit(-mean, axis) if known else np.zeros_like(mean)
    if not np.any(across):
        across = _orthogonal_unit(-updates.std(axis=0), axis)
    if not np.any(across):  # one colluder: no spread to follow; any fixed direction across will do
        across = _orthogonal_unit(np.random.default_rng(_COLLUSION_KEY).normal(size=mean.shape), axis)
    return axis, across


def _honest_trust(updates: NDArray[np.float64], num_answers: int, axis: Vector) -> float:
    """FLTrust's summed weight of the honest answers, as the colluders' own updates' cosines with ``axis`` suggest."""
    cosines = updates @ axis / np.maximum(np.linalg.norm(updates, axis=1), 1e-12)
    return (num_answers - updates.shape[0]) * float(np.mean(np.maximum(cosines, 0.0)))


def _calibrated_cosine(updates: NDArray[np.float64], num_answers: int, estimate: Vector, check: Vector) -> float:
    """The cosine with ``estimate`` whose update pushes furthest across ``check``, a second estimate of the server's
    direction from other data: how far an estimate can be trusted, measured rather than assumed."""
    axis, across = _frame(updates, estimate)
    truth, harm = _frame(updates, check)
    candidates = np.outer(_COSINES, axis) + np.outer(np.sqrt(1.0 - _COSINES**2), across)
    trust = np.maximum(candidates @ truth, 0.0)
    push = trust * (candidates @ harm) / (_honest_trust(updates, num_answers, truth) + updates.shape[0] * trust)
    return float(_COSINES[int(np.argmax(push))])


def fltrust_adaptive(
    updates: NDArray[np.float64],
    num_answers: int,
    server_update: Vector | None = None,
    calibration: tuple[Vector, Vector] | None = None,
) -> Vector:
    """The update at the angle to the server's direction (``server_update``, or the colluders' mean when they cannot
    compute it) that pushes FLTrust's fused step furthest across it, at the length of the colluders' mean: against
    their mean's part across ``server_update`` where they know it, else against their spread (``-sigma``).

    The angle is the best one if ``server_update`` is the server's own. Where it is an estimate, ``calibration``
    holds two more from disjoint halves of the same data: the angle is the one that, aimed by the first, pushes
    furthest across the second."""
    mean = updates.mean(axis=0)
    length = float(np.linalg.norm(mean))
    if length == 0:
        return mean
    axis, across = _frame(updates, server_update)
    if calibration is not None:
        cosine = _calibrated_cosine(updates, num_answers, *calibration)
    else:
        trust = _honest_trust(updates, num_answers, axis)
        push = _COSINES * np.sqrt(1.0 - _COSINES**2) / (trust + updates.shape[0] * _COSINES)
        cosine = float(_COSINES[int(np.argmax(push))])
    out: Vector = length * (cosine * axis + np.sqrt(1.0 - cosine**2) * across)
    return out


class Colluding(Behaviour):
    """A colluder's client half: it trains and answers honestly; :class:`ColludingServer` rewrites its answer."""

    kind = "weights"

    def craft(self, updates: NDArray[np.float64], num_answers: int, server: ServerEstimate) -> Vector:
        """The update every colluder sends, from their honest ``updates`` ``(m, D)``, the round's answer count and
        what they know of the server's own update."""
        raise NotImplementedError


@ADVERSARIES.register("alie")
class Alie(Colluding):
    """ "A Little Is Enough": ``mu - z * sigma`` of the colluders' honest updates, the same from each of them."""

    settings = frozenset({"z"})

    def craft(self, updates: NDArray[np.float64], num_answers: int, server: ServerEstimate) -> Vector:
        """:func:`alie` with ``adversary.z``."""
        return alie(updates, num_answers, self.config.z)


@ADVERSARIES.register("min_max")
class MinMax(Colluding):
    """Min-max: the farthest step against the spread that stays within the colluders' own largest distance."""

    def craft(self, updates: NDArray[np.float64], num_answers: int, server: ServerEstimate) -> Vector:
        """:func:`min_max`."""
        return min_max(updates)


@ADVERSARIES.register("min_sum")
class MinSum(Colluding):
    """Min-sum: the farthest step against the spread whose summed squared distances stay within the colluders'."""

    def craft(self, updates: NDArray[np.float64], num_answers: int, server: ServerEstimate) -> Vector:
        """:func:`min_sum`."""
        return min_sum(updates)


@ADVERSARIES.register("fltrust_adaptive")
class FLTrustAdaptive(Colluding):
    """Knows FLTrust: pushes across the server's direction at the best angle. The direction is computed as the server
    does where its root is public, estimated on the labelled transfer set (the angle calibrated on two halves of it)
    where the root is the server's own, else estimated by the colluders' mean."""

    def craft(self, updates: NDArray[np.float64], num_answers: int, server: ServerEstimate) -> Vector:
        """:func:`fltrust_adaptive`."""
        return fltrust_adaptive(updates, num_answers, server.update, server.calibration)


def attacked(arrays: Mapping[str, NDArray[Any]], reference: Mapping[str, NDArray[Any]]) -> list[str]:
    """Names of the learnt weights an update attack rewrites: float32 arrays shaped as the server sent them."""
    return [
        name
        for name in sorted(arrays)
        if arrays[name].dtype == np.float32
        and name in reference
        and reference[name].shape == arrays[name].shape
        and not name.endswith(_BUFFER_SUFFIXES)
    ]


def _update(training: ServerTraining, reference: Mapping[str, NDArray[Any]], names: list[str]) -> Vector:
    """The update ``training`` makes of the ``reference`` weights, flat over ``names``."""
    return flatten(training(reference), names) - flatten(reference, names)


def collude(
    answers: Mapping[int, Arrays],
    colluders: frozenset[int],
    references: Callable[[int], Mapping[str, NDArray[Any]]],
    craft: Craft,
    server_training: ServerTraining | None = None,
    calibration: tuple[ServerTraining, ServerTraining] | None = None,
) -> dict[int, Arrays]:
    """``answers`` with the colluders' rewritten: per architecture (the names and shapes they send), each sends the
    reference weights plus ``craft`` of the group's honest updates (and of the server's own update, where
    ``server_training`` makes it, and of the two updates that ``calibration`` makes). Honest answers are neither
    read nor changed."""
    out = dict(answers)
    groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
    for client_id in sorted(colluders.intersection(answers)):
        reference = references(client_id)
        names = attacked(answers[client_id], reference)
        groups.setdefault(tuple((name, reference[name].shape) for name in names), []).append(client_id)
    for key, members in sorted(groups.items()):
        names = [name for name, _ in key]
        if not names:
            continue
        reference = references(members[0])
        base = flatten(reference, names)
        honest = np.stack([flatten(answers[cid], names) for cid in members]) - base
        update = None if server_training is None else _update(server_training, reference, names)
        halves = None
        if calibration is not None:
            first, second = (_update(training, reference, names) for training in calibration)
            halves = (first, second)
        crafted = craft(honest, len(answers), ServerEstimate(update, halves))
        weights = unflatten(base + crafted, {name: reference[name] for name in names})
        for cid in members:
            out[cid] = {**answers[cid], **weights}
    return out


class CollusionServer(ServerWrapper):
    """``server`` as it is, except that the ``colluders``' answers are rewritten (:meth:`rewrite`) before it
    aggregates them; a rewritten answer that fails the server's checks is replaced by the honest one (a colluder
    sends only what passes them). The side channel where the colluders pool their honest answers."""

    def __init__(self, server: ServerRole, colluders: frozenset[int]) -> None:
        super().__init__(server)
        self.colluders = colluders

    def rewrite(self, round: int, answers: Mapping[int, Arrays]) -> dict[int, Arrays]:
        """``answers`` with the colluders' rewritten; honest answers are neither read nor changed."""
        raise NotImplementedError

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """The server's aggregation of the answers, the colluders' rewritten."""
        rewritten = self.rewrite(round, answers)
        for client_id in sorted(self.colluders.intersection(rewritten)):
            if self.server.check_answer(round, client_id, rewritten[client_id]) is not None:
                rewritten[client_id] = answers[client_id]
        return self.server.aggregate(round, rewritten)


class ColludingServer(CollusionServer):
    """The colluders of a weight attack (:class:`Colluding`): each sends the update ``craft`` makes of theirs.

    Parameters
    ----------
    server : ServerRole
        The algorithm's server half (it never learns who colludes).
    colluders : frozenset[int]
        The malicious client ids.
    craft : Craft
        The attack (:meth:`Colluding.craft`).
    server_training : RootUpdate | None
        The colluders' own replica of the server's training on its root data set, when the server has one (FLTrust):
        built from what every party of an fl-kd run knows (the config, its seed and the public transfer set, labels
        included), it computes the server's update exactly where the root is that public set, and approximates it
        where the root is the server's private set (:meth:`fl_kd.kd.fedavg.root.RootUpdate.colluders_replica`).
    calibration : tuple[RootUpdate, RootUpdate] | None
        Where ``server_training`` only approximates the server's, the same training on two disjoint halves of its
        data, against which the colluders measure how far such an approximation can be trusted.
    """

    def __init__(
        self,
        server: ServerRole,
        colluders: frozenset[int],
        craft: Craft,
        server_training: RootUpdate | None = None,
        calibration: tuple[RootUpdate, RootUpdate] | None = None,
    ) -> None:
        super().__init__(server, colluders)
        self.craft = craft
        self.server_training = server_training
        self.calibration = calibration

    def rewrite(self, round: int, answers: Mapping[int, Arrays]) -> dict[int, Arrays]:
        """:func:`collude` with this round's replica of the server's training, where there is one."""
        replica, halves = self.server_training, self.calibration
        trains = None if replica is None else functools.partial(replica, round)
        calibration = (
            None if halves is None else (functools.partial(halves[0], round), functools.partial(halves[1], round))
        )

        def references(client_id: int) -> Mapping[str, NDArray[Any]]:
            return self.server.train_instruction(round, client_id).arrays

        return collude(answers, self.colluders, references, self.craft, trains, calibration)
