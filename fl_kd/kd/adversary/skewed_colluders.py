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

With one cut at 0.8 the test passes them (BENCHMARKS_KD.md); its lower cuts see their lifts move up.
The top class stays the honest one, so the tests of the class a client names see honest answers (the lift lowers the
confidence it states, which the confidence test, looking for lies stated surer, does not suspect). Each colluder's
lift also raises the mean the test compares the others with, which leaves each of them a margin under its cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.adversary.behaviours import ADVERSARIES, LOGIT_ARRAYS, Behaviour, rewired
from fl_kd.kd.adversary.camouflage import SKEW_GAP
from fl_kd.kd.agreement import RAISE_QUANTILES, Answers, floored_log_probs, others_mean, raise_amounts
from fl_kd.kd.roles import Arrays, ServerRole, ServerWrapper
from fl_kd.kd.training import from_wire

MARGIN_Z = 2.0
"""How far under its cut a colluder aims each lift, in standard errors of its estimate of the others' mean (the other
colluders' spread over their count): the estimate errs, and a lift that overshoots the cut counts against it."""


@ADVERSARIES.register("skewed_colluders")
class SkewedColluders(Behaviour):
    """A colluder's client half: it trains and answers honestly; :class:`SkewCollusionServer` rewrites its logits
    (:func:`bounded_lifts`) where the answers meet. ``adversary.z`` is the margin under the cut
    (:data:`MARGIN_Z` when unset)."""

    kind = "logits"
    settings = frozenset({"z"})


def bounded_lifts(
    honest: Answers, labelled: int, num_classes: int, margin_z: float = MARGIN_Z
) -> dict[int, NDArray[np.float64]]:
    """Per colluder, the logits ``(n, C)`` it sends instead of its honest ``(positions, logits)``.

    Unchanged where a label checks it (positions below ``labelled``), on rows fewer than
    :data:`~fl_kd.kd.agreement.MIN_OTHERS` other colluders answered, and for a colluder with no such labelled row;
    elsewhere one class lifted as the module docstring says, aimed ``margin_z`` standard errors of the estimated
    mean under the cut.
    """
    checked, unchecked = _split(honest, labelled)
    reference = raise_amounts(checked, num_classes)
    lifts, means = raise_amounts(unchecked, num_classes), others_mean(unchecked, num_classes)
    squares = others_mean(unchecked, num_classes, of=lambda logits: floored_log_probs(logits) ** 2)
    out = {}
    for client_id, (positions, logits) in honest.items():
        out[client_id] = rewritten = np.array(logits, dtype=np.float64)
        ref_lift, ref_counted = reference[client_id]
        rows = np.flatnonzero(np.asarray(positions) >= labelled)
        if not ref_counted.any() or rows.size == 0:
            continue
        cut = float(np.quantile(ref_lift[ref_counted], max(RAISE_QUANTILES)))
        (lift, counted), (mean, by), (square, _) = lifts[client_id], means[client_id], squares[client_id]
        own, index = rewritten[rows], np.arange(rows.size)
        top = own.argmax(axis=1)
        pooled = (mean * by[:, None] + floored_log_probs(own)) / (by[:, None] + 1)  # each colluder's answer once
        pooled[index, top] = -np.inf
        lifted = pooled.argmax(axis=1)
        spread = np.sqrt(np.maximum(square - mean**2, 0.0)[index, lifted] / np.maximum(by - 1, 1))
        error = spread / np.sqrt(np.maximum(by, 1))
        bound = mean[index, lifted] + cut - margin_z * error  # the log-probability aimed at
        # The logit that gives the lifted class probability exp(bound), every other logit left as it is.
        allowed = bound - np.log1p(-np.exp(np.minimum(bound, -1e-12))) + _logsumexp_without(own, lifted)
        ceiling = own[index, top] - SKEW_GAP
        free = lift > cut + margin_z * error  # its honest answer is beyond the cut already: it counts as not kept
        raised = np.maximum(own[index, lifted], np.where(free, ceiling, np.minimum(ceiling, allowed)))
        own[index, lifted] = np.where(counted, raised, own[index, lifted])
        rewritten[rows] = own
    return out


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


class SkewCollusionServer(ServerWrapper):
    """``server`` as it is, except that the colluders' logits are rewritten (:func:`bounded_lifts`, pooled per answer
    array) before it aggregates them; a rewritten answer that fails the server's checks is replaced by the honest one.

    Parameters
    ----------
    server : ServerRole
        The algorithm's server half (it never learns who colludes).
    colluders : frozenset[int]
        The malicious client ids.
    num_classes : int
        C.
    labelled : int
        Size of the labelled transfer part: positions below it are checked by a label.
    margin_z : float (default: :data:`MARGIN_Z`)
        How far under its cut each colluder aims, in standard errors (:func:`bounded_lifts`).
    """

    def __init__(
        self, server: ServerRole, colluders: frozenset[int], num_classes: int, labelled: int, margin_z: float = MARGIN_Z
    ) -> None:
        super().__init__(server)
        self.colluders = colluders
        self.num_classes = num_classes
        self.labelled = labelled
        self.margin_z = margin_z

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """The server's aggregation of the answers, the colluders' rewritten."""
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
            for client_id, logits in bounded_lifts(honest, self.labelled, self.num_classes, self.margin_z).items():
                rewritten[client_id] = {
                    **rewritten[client_id],
                    logits_name: rewired(answers[client_id][logits_name], logits),
                }
        for client_id in sorted(self.colluders.intersection(rewritten)):
            if self.server.check_answer(round, client_id, rewritten[client_id]) is not None:
                rewritten[client_id] = answers[client_id]
        return self.server.aggregate(round, rewritten)
