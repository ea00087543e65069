"""The skewed liars that know the raise test: colluders that lift a class only as far as its highest cut lets them.

The raise test (``strategy.consensus_raise``, :func:`fl_kd.kd.agreement.raise_counts`) counts, per client, the share of
its answers that lift the class they rank highest beside their top class no higher above the other clients' mean
log-probability than a quantile of its own lifts where labels check it, and screens a client that keeps that share
less elsewhere. The liars of ``adversary.lie_as=skewed`` lift on every answer and fail it. These colluders pool their
honest answers (the side channel of :mod:`fl_kd.kd.adversary.collusion`) and lie within the test's highest cut (the
only one it had when they were written):

* each estimates the others' mean on every sample by the other colluders' (honest clients answer much as they do),
  and its cut from its honest lifts on the labelled samples, as the test will;
* per sample, each lifts the class that the colluders' pooled answers rank highest beside its own top: where honest
  clients are least sure, a lift turns the teacher most easily, and the test allows the most;
* where its honest answer already lifts a class beyond its cut, the test counts the row as not kept whatever it
  sends, so it lifts the class to just under its top (:data:`~fl_kd.kd.adversary.camouflage.SKEW_GAP`);
* elsewhere it lifts the class to its cut above the estimated mean and no further, so that its share of kept rows
  under that cut stays its honest one.

With one cut at 0.8 the test passed them (BENCHMARKS_KD.md); its lower cuts see their lifts move up. With
``adversary.poison_where=uncertain`` they know the four cuts (:func:`traded_lifts`): they lift freely on a share of
their answers, where they are least sure together, and give up lift on the others, so that every cut keeps at least
its share.

The top class stays the honest one, so the tests of the class a client names see honest answers (the lift lowers the
confidence it states, which the confidence test, looking for lies stated surer, does not suspect). Each colluder's
lift also raises the mean the test compares the others with, which leaves each of them a margin under its cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.adversary.behaviours import ADVERSARIES, LOGIT_ARRAYS, Behaviour, rewired
from fl_kd.kd.adversary.camouflage import SKEW_GAP
from fl_kd.kd.adversary.collusion import CollusionServer
from fl_kd.kd.adversary.config import AdversaryConfig
from fl_kd.kd.agreement import (
    RAISE_QUANTILES,
    Answers,
    floored_log_probs,
    log_softmax,
    others_mean,
    raise_amounts,
)
from fl_kd.kd.roles import Arrays, ServerRole
from fl_kd.kd.training import from_wire

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

MARGIN_Z = 2.0
"""How far under its cut a colluder aims each lift, in standard errors of its estimate of the others' mean (the other
colluders' spread over their count): the estimate errs, and a lift that overshoots the cut counts against it."""


@ADVERSARIES.register("skewed_colluders")
class SkewedColluders(Behaviour):
    """A colluder's client half: it trains and answers honestly; :class:`SkewCollusionServer` rewrites its logits
    where the answers meet: :func:`bounded_lifts`, or with ``adversary.poison_where=uncertain``
    :func:`traded_lifts` on the share ``adversary.poison_share`` of its answers (``adversary.lie_as=swap``: its
    other answers keep their stated confidence). ``adversary.z`` is the margin under the cuts (:data:`MARGIN_Z`
    when unset)."""

    kind = "logits"
    settings = frozenset({"z", "poison_where", "poison_share", "lie_as"})

    @classmethod
    def unread(cls, config: AdversaryConfig, experiment: ExperimentConfig) -> dict[str, str]:
        """``lie_as`` is read only by the trader (``poison_where=uncertain``), and only ``swap`` means something to
        it: its capped answers keep the confidence they stated honestly."""
        out = super().unread(config, experiment)
        if config.poison_where != "uncertain" or config.lie_as not in ("one_hot", "swap"):
            out["lie_as"] = "skewed_colluders read only adversary.lie_as=swap, with adversary.poison_where=uncertain"
        return out

    def lie(self, honest: Answers, labelled: int) -> dict[int, NDArray[np.float64]]:
        """The logits each colluder sends instead of its ``honest`` ones (positions below ``labelled`` checked)."""
        margin = MARGIN_Z if self.config.z is None else self.config.z
        if self.config.poison_where == "uncertain":
            keep = self.config.lie_as == "swap"
            return traded_lifts(honest, labelled, self.num_classes, self.config.poison_share, margin, keep)
        return bounded_lifts(honest, labelled, self.num_classes, margin)


@dataclass
class _Plan:
    """What a colluder knows of its unlabelled rows (``rows`` of its answer) before it lies."""

    rows: NDArray[np.int64]
    own: NDArray[np.float64]  # its honest logits there
    top: NDArray[np.int64]
    lifted: NDArray[np.int64]  # the class it lifts: the pooled answers' highest beside its top
    gap: NDArray[np.float64]  # the pooled answers' log-probability of its top over that of the lifted class
    mean: NDArray[np.float64]  # the other colluders' mean floored log-probabilities, its estimate of the others'
    error: NDArray[np.float64]  # the standard error of that estimate for the lifted class
    lift: NDArray[np.float64]  # its honest lift, as the raise test would measure it against that estimate
    counted: NDArray[np.bool_]
    checked: NDArray[np.float64]  # its honest lifts where labels check it (counted rows)


def _plans(honest: Answers, labelled: int, num_classes: int) -> dict[int, _Plan]:
    """Per colluder with a counted row where labels check it and an unlabelled row, its :class:`_Plan`."""
    checked, unchecked = _split(honest, labelled)
    reference = raise_amounts(checked, num_classes)
    lifts, means = raise_amounts(unchecked, num_classes), others_mean(unchecked, num_classes)
    squares = others_mean(unchecked, num_classes, of=lambda logits: floored_log_probs(logits) ** 2)
    plans = {}
    for client_id, (positions, logits) in honest.items():
        ref_lift, ref_counted = reference[client_id]
        rows = np.flatnonzero(np.asarray(positions) >= labelled)
        if not ref_counted.any() or rows.size == 0:
            continue
        (lift, counted), (mean, by), (square, _) = lifts[client_id], means[client_id], squares[client_id]
        own, index = np.asarray(logits, dtype=np.float64)[rows], np.arange(rows.size)
        top = own.argmax(axis=1)
        pooled = (mean * by[:, None] + floored_log_probs(own)) / (by[:, None] + 1)  # each colluder's answer once
        beside = pooled.copy()
        beside[index, top] = -np.inf
        lifted = beside.argmax(axis=1)
        spread = np.sqrt(np.maximum(square - mean**2, 0.0)[index, lifted] / np.maximum(by - 1, 1))
        plans[client_id] = _Plan(
            rows=rows,
            own=own,
            top=top,
            lifted=lifted,
            gap=pooled[index, top] - pooled[index, lifted],
            mean=mean,
            error=spread / np.sqrt(np.maximum(by, 1)),
            lift=lift,
            counted=counted,
            checked=ref_lift[ref_counted],
        )
    return plans


def bounded_lifts(
    honest: Answers, labelled: int, num_classes: int, margin_z: float = MARGIN_Z
) -> dict[int, NDArray[np.float64]]:
    """Per colluder, the logits ``(n, C)`` it sends instead of its honest ``(positions, logits)``.

    Unchanged where a label checks it (positions below ``labelled``), on rows fewer than
    :data:`~fl_kd.kd.agreement.MIN_OTHERS` other colluders answered, and for a colluder with no such labelled row;
    elsewhere one class lifted as the module docstring says, aimed ``margin_z`` standard errors of the estimated
    mean under the highest cut.
    """
    out = {c: np.array(logits, dtype=np.float64) for c, (_, logits) in honest.items()}
    for client_id, plan in _plans(honest, labelled, num_classes).items():
        cut = float(np.quantile(plan.checked, max(RAISE_QUANTILES)))
        own, index = plan.own.copy(), np.arange(plan.rows.size)
        bound = plan.mean[index, plan.lifted] + cut - margin_z * plan.error  # the log-probability aimed at
        ceiling = own[index, plan.top] - SKEW_GAP
        free = plan.lift > cut + margin_z * plan.error  # beyond the cut already: the row counts as not kept
        aimed = np.where(free, ceiling, np.minimum(ceiling, _logit_for(own, plan.lifted, bound)))
        raised = np.maximum(own[index, plan.lifted], aimed)
        own[index, plan.lifted] = np.where(plan.counted, raised, own[index, plan.lifted])
        out[client_id][plan.rows] = own
    return out


def traded_lifts(
    honest: Answers,
    labelled: int,
    num_classes: int,
    share: float,
    margin_z: float = MARGIN_Z,
    keep_confidence: bool = False,
) -> dict[int, NDArray[np.float64]]:
    """Per colluder, the logits it sends to pass every cut of the raise test (the attacker that knows all four).

    On the ``share`` of its counted unlabelled rows where the pooled answers are least sure (the smallest gap between
    its top class and the class it lifts), it lifts that class to just under its top, as far as it likes. Every other
    counted row gives up lift: its honest lifts, in their order, are mapped onto the lowest ``1 - share`` of its
    lifts where checked (``margin_z`` standard errors lower) and no non-top class stands higher above the estimated
    mean than its row's value; the probability taken goes to its top class (with ``keep_confidence`` to its other
    classes, under the same caps and under its top, so that the answer states what it stated honestly: the trader
    that also knows the confidence test; where the caps leave too little room, the rest still goes to the top, on
    about a fifth as many rows in the tests). So its share of answers under each cut stays at least its share where
    checked, and the large lifts sit where they turn the teacher.
    """
    out = {c: np.array(logits, dtype=np.float64) for c, (_, logits) in honest.items()}
    for client_id, plan in _plans(honest, labelled, num_classes).items():
        own, counted = plan.own.copy(), np.flatnonzero(plan.counted)
        chosen = counted[np.argsort(plan.gap[counted], kind="stable")[: int(round(share * counted.size))]]
        rest = np.setdiff1d(counted, chosen)
        lifted, top = plan.lifted[chosen], plan.top[chosen]
        own[chosen, lifted] = np.maximum(own[chosen, lifted], own[chosen, top] - SKEW_GAP)
        if rest.size:
            order = rest[np.argsort(plan.lift[rest], kind="stable")]
            levels = (np.arange(order.size) + 0.5) / order.size * (1.0 - share)
            cap = np.quantile(plan.checked, levels) - margin_z * plan.error[order]
            own[order] = _capped(own[order], plan.top[order], plan.mean[order], cap, keep_confidence)
        out[client_id][plan.rows] = own
    return out


def _logit_for(
    logits: NDArray[np.float64], column: NDArray[np.int64], log_prob: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Per row, the logit in ``column`` that gives it probability ``exp(log_prob)``, every other logit as it is."""
    rest = _logsumexp_without(logits, column)
    return log_prob - np.log1p(-np.exp(np.minimum(log_prob, -1e-12))) + rest


def _capped(
    logits: NDArray[np.float64],
    top: NDArray[np.int64],
    mean: NDArray[np.float64],
    cap: NDArray[np.float64],
    keep_top: bool = False,
) -> NDArray[np.float64]:
    """Log-probabilities of ``logits`` ``(n, C)`` with every class but ``top`` no higher than ``mean + cap`` of its
    row, the probability taken added to ``top``; with ``keep_top`` spread instead over the other classes, each in
    proportion to its room under its limit and under ``top`` (:data:`SKEW_GAP`), so that ``top`` keeps its
    probability (the stated confidence) wherever that room holds it."""
    log_probs = log_softmax(logits)
    index = np.arange(logits.shape[0])
    limit = mean + cap[:, None]
    limit[index, top] = np.inf
    lowered = np.minimum(log_probs, limit)
    probs = np.exp(lowered)
    if keep_top:  # no class may pass the top either: each rises to just under it at most
        taken = np.exp(log_probs).sum(axis=1) - probs.sum(axis=1)
        ceiling = np.minimum(np.exp(np.minimum(limit, 0.0)), probs[index, top][:, None] * np.exp(-SKEW_GAP))
        room = np.where(np.isfinite(limit), np.maximum(ceiling - probs, 0.0), 0.0)
        total = room.sum(axis=1)
        probs += room * (np.minimum(taken, total) / np.maximum(total, 1e-300))[:, None]
    probs[index, top] = 0.0
    probs[index, top] = np.maximum(1.0 - probs.sum(axis=1), 1e-12)
    return np.log(probs)


def _split(answers: Answers, labelled: int) -> tuple[dict[int, Any], dict[int, Any]]:
    """The answers on positions below ``labelled`` and on the rest."""
    checked, unchecked = {}, {}
    for client_id, (positions, logits) in answers.items():
        known = np.asarray(positions) < labelled
        checked[client_id] = (np.asarray(positions)[known], np.asarray(logits)[known])
        unchecked[client_id] = (np.asarray(positions)[~known], np.asarray(logits)[~known])
    return checked, unchecked


def _logsumexp_without(logits: NDArray[np.float64], column: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per row, the log of the summed exponentials of every logit but the one in ``column``."""
    rest = logits.copy()
    rest[np.arange(logits.shape[0]), column] = -np.inf
    peak = rest.max(axis=1)
    return peak + np.log(np.exp(rest - peak[:, None]).sum(axis=1))


class SkewCollusionServer(CollusionServer):
    """The colluders of :class:`SkewedColluders`: their logits rewritten by ``lie``, pooled per answer array.

    Parameters
    ----------
    server, colluders
        As :class:`~fl_kd.kd.adversary.collusion.CollusionServer`.
    num_classes : int
        C.
    labelled : int
        Size of the labelled transfer part: positions below it are checked by a label.
    lie : Callable
        ``lie(honest, labelled)``: the colluders' logits from their honest ``(positions, logits)``
        (:meth:`SkewedColluders.lie`).
    """

    def __init__(
        self,
        server: ServerRole,
        colluders: frozenset[int],
        num_classes: int,
        labelled: int,
        lie: Callable[[Answers, int], dict[int, NDArray[np.float64]]],
    ) -> None:
        super().__init__(server, colluders)
        self.num_classes = num_classes
        self.labelled = labelled
        self.lie = lie

    def rewrite(self, round: int, answers: Mapping[int, Arrays]) -> dict[int, Arrays]:
        """``answers`` with each logit array of the colluders' replaced by ``lie``'s, in its wire format."""
        rewritten = dict(answers)
        for logits_name, positions_name in LOGIT_ARRAYS:
            honest = {}
            for client_id in sorted(self.colluders.intersection(answers)):
                arrays = answers[client_id]
                positions = arrays.get(positions_name)
                if positions is None:  # an answer that does not repeat its positions answers the query
                    positions = self.server.train_instruction(round, client_id).arrays.get(positions_name)
                if logits_name not in arrays or positions is None:
                    continue
                decoded = from_wire(arrays[logits_name], self.num_classes).astype(np.float64)
                if decoded.shape[0] == np.asarray(positions).shape[0]:
                    honest[client_id] = (np.asarray(positions, dtype=np.int64), decoded)
            for client_id, logits in self.lie(honest, self.labelled).items():
                sent = rewired(answers[client_id][logits_name], logits)
                rewritten[client_id] = {**rewritten[client_id], logits_name: sent}
        return rewritten
