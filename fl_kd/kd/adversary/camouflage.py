"""The attacker that knows selective KD: right and sure where a label checks it, wrong where none can.

Apart from the other logit attacks for its size: how it lies (where, how often, how sure it says it is) is what the
defences of :mod:`fl_kd.kd.fedgems` and :mod:`fl_kd.kd.consensus` were built against, one setting per defence it knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.adversary.behaviours import ADVERSARIES, Behaviour
from fl_kd.kd.adversary.config import AdversaryConfig
from fl_kd.kd.training import confidence

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

SKEW_GAP = 0.1
"""Nats by which a ``lie_as=skewed`` lie states its wrong class under its top class (about 0.9 of its probability):
more than a level of the 8-bit wire (0.078 nats), so the top class stays first after decoding there."""


@ADVERSARIES.register("camouflage")
class Camouflage(Behaviour):
    """Knows selective KD: right and sure wherever a label can check it, confidently wrong wherever none can.

    Where the client knows the label (the labelled transfer part) it answers a one-hot logit
    (``adversary.confidence``) on the true class: a selection by correctness always keeps it, and with the lowest
    entropy of all it takes the inverse-entropy fusion weight from the honest clients, so the teacher there is the
    bare label, without their dark knowledge. Where no label can check it (the unlabelled part) it answers one-hot
    on a wrong class, as ``confident_wrong``. A per-client reliability measured on labelled answers rates it
    perfect, so this is the attacker a trust score built on the labelled part must survive. Against a screen
    that checks it where it cannot tell (canaries), it lies on only a share ``adversary.poison_share`` of the
    unlabelled samples, drawn per round, and answers the rest honestly; with ``adversary.checked=honest`` it also
    answers its honest logits where labels check it, so that it is no more accurate there than elsewhere and a
    screen comparing the two sees only the share it poisons; with ``adversary.checked=poisoned`` it poisons the same
    share where labels check it, so that such a screen sees no difference at all. With
    ``adversary.poison_where=uncertain`` it lies where it is least sure, naming its own runner-up class; with
    ``adversary.lie_as=swap`` a lie states its honest answer's confidence instead of one-hot certainty, with
    ``adversary.lie_as=quantile`` the confidence of the quantile ``adversary.lie_quantile`` of its labelled answers,
    with ``adversary.lie_as=traded`` the confidence of its surest honest answers, which state the lies' instead.
    With ``adversary.lie_as=skewed`` a lie keeps its honest top class and raises the wrong class to just under it
    (:data:`SKEW_GAP`): every test of right or wrong (canaries, agreement) sees its honest answer, and only the soft
    knowledge the server distils carries the lie.
    """

    kind = "logits"
    settings = frozenset(
        {"confidence", "coordinated", "poison_share", "checked", "poison_where", "lie_as", "lie_quantile"}
    )

    @classmethod
    def unread(cls, config: AdversaryConfig, experiment: ExperimentConfig) -> dict[str, str]:
        """Beside the settings it never reads: ``lie_quantile`` without ``lie_as=quantile``, and how it lies where no
        transfer sample lacks a label (then it lies nowhere, unless ``checked=poisoned``)."""
        out = super().unread(config, experiment)
        if config.lie_as != "quantile":
            out["lie_quantile"] = "only adversary.lie_as=quantile reads it"
        if config.lie_as != "one_hot" and config.checked != "truth":  # no one-hot answer left: lies state another
            out["confidence"] = "camouflage answers one-hot only with adversary.lie_as=one_hot or checked=truth"
        if experiment.transfer.unlabelled == 0 and config.checked != "poisoned":
            why = (
                "with transfer.unlabelled=0 a label checks every answer of camouflage, which then never lies "
                "(unless adversary.checked=poisoned)"
            )
            unused = ("poison_share", "poison_where", "lie_as", "lie_quantile", "coordinated")
            out.update(dict.fromkeys(unused + (("confidence",) if config.checked == "honest" else ()), why))
        return out

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """One-hot on the true class where the label is known, on a wrong class where it lies, honest elsewhere."""
        rows = logits.shape[0]
        known = positions < self.transfer_y.size
        if self.config.checked == "poisoned":  # checked or not, it answers alike
            known = np.zeros_like(known)
        truth = np.where(known, self.labels_or_predictions(logits, positions), logits.argmax(axis=1))
        uncertain = self.config.poison_where == "uncertain"
        # Where it is least sure, its own runner-up is the lie most likely to turn a teacher that is unsure too.
        if uncertain:
            ranked = np.argsort(logits, axis=1, kind="stable")
            wrong = np.where(ranked[:, -2] == truth, ranked[:, -1], ranked[:, -2])  # a tie for the top is no lie
        else:
            wrong = self.wrong_classes(truth, rng, positions)
        out = np.zeros_like(logits)
        out[np.arange(rows), np.where(known, truth, wrong)] = self.config.confidence
        unchecked = np.flatnonzero(~known)
        if self.config.lie_as in ("swap", "traded"):  # the lie keeps the confidence its honest answer states
            top = logits[unchecked].argmax(axis=1)
            out[unchecked] = logits[unchecked]
            out[unchecked, top] = logits[unchecked, wrong[unchecked]]
            out[unchecked, wrong[unchecked]] = logits[unchecked, top]
        elif self.config.lie_as == "skewed":  # right, with the wrong class raised to a close second (never lowered)
            top = logits[unchecked].argmax(axis=1)
            out[unchecked] = logits[unchecked]
            raised = np.maximum(logits[unchecked, wrong[unchecked]], logits[unchecked, top] - SKEW_GAP)
            out[unchecked, wrong[unchecked]] = raised
        elif self.config.lie_as == "quantile":  # as sure as it is on that share of its answers where labels check it
            labelled = positions < self.transfer_y.size
            sure = confidence(logits[labelled] if labelled.any() else logits)
            stated = min(float(np.quantile(sure, self.config.lie_quantile)), 1.0 - 1e-6) if sure.size else 0.5
            out[unchecked] = np.log((1.0 - stated) / (self.num_classes - 1))
            out[unchecked, wrong[unchecked]] = np.log(stated)
        if self.config.poison_share < 1.0:
            lies = self.least_sure(logits, ~known) if uncertain else self.poisoned(positions, rng)
            out[~known & ~lies] = logits[~known & ~lies]
            if self.config.lie_as == "traded":
                self._trade_confidence(out, logits, np.flatnonzero(~known & lies), np.flatnonzero(~known & ~lies))
        if self.config.checked == "honest":
            out[known] = logits[known]
        return out

    def _trade_confidence(
        self, out: NDArray[np.float64], logits: NDArray[np.float64], lied: NDArray[Any], honest: NDArray[Any]
    ) -> None:
        """In place: the lies (the least sure first) take the confidences of as many of its surest honest answers
        (the surest first), which take the lies' own; the confidences it states, as a whole, stay its honest ones."""
        sure = confidence(logits)
        lied = lied[np.argsort(sure[lied], kind="stable")]
        donors = honest[np.argsort(-sure[honest], kind="stable")][: lied.size]
        lied = lied[: donors.size]
        for rows, stated in ((lied, sure[donors]), (donors, sure[lied])):
            stated = np.minimum(stated, 1.0 - 1e-6)
            said = out[rows].argmax(axis=1)
            out[rows] = np.log((1.0 - stated) / (self.num_classes - 1))[:, None]
            out[rows, said] = np.log(stated)
