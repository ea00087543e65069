"""The consensus screen's ``strategy.*`` settings (:class:`ConsensusConfig`), declared once for FedGEMS and the
logit-sharing peers, and the screen they build (:class:`~fl_kd.kd.consensus.ConsensusScreen`)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_kd.config import check_range, require
from fl_kd.kd.consensus import MARGIN, RAISE_MARGIN, ConsensusScreen


@dataclass(kw_only=True)
class ConsensusConfig:
    """The consensus screen's ``strategy.*`` settings, declared once for FedGEMS and the logit-sharing peers.

    Attributes
    ----------
    consensus_z : float (default: 0.0)
        Each client's agreement with the other clients' plurality vote on the unlabelled samples is compared with
        its agreement on the reference (labelled samples, where it knows it is checked); one whose shortfall
        exceeds the median client's by ``consensus_margin`` and more than this many standard errors (pooled over
        the rounds so far) is left out (:class:`ConsensusScreen`). 0: no screen.
    consensus_margin : float (default: 0.02)
        The shortfall beyond the median client's that counts as no evidence in any test (honest clients differ
        by about this much for good). Like ``consensus_confidence``, refused without ``consensus_z``.
    consensus_confidence : bool (default: False)
        Also compare how sure a client says it is on the unlabelled samples and on the reference (at its 20%, 40%,
        60% and 80% quantiles there, the share of its unlabelled answers stated less sure), and its agreement
        within each band of stated confidence those quantiles make above the 40% one; these seven tests, after a
        Bonferroni correction, screen as the agreement does. A liar that lies only where it is least sure, stated
        surer, hides among the honest disagreements but not here. False: agreement alone.
    consensus_burst_z : float (default: 0.0)
        Also run the tests (agreement; with ``consensus_confidence`` the confidence tests too) on every window of the
        latest rounds (the last one, the last two, ...), and leave out a client whose excess in one exceeds this many
        standard errors: the pooled tests dilute a client that answers honestly for rounds and then lies. 0: off.
    consensus_raise : bool (default: False)
        Also compare how far a client lifts a class beside its own top class above the other clients' mean
        log-probability, on the unlabelled samples and on the reference (the share of its answers lifting no higher
        than the 20%, 40%, 60% and 80% quantiles of its lifts on the reference), tested as the agreement is:
        colluders that name their honest class and lift one other class near it pass every test of the class they
        name, while in a product of experts the lifted class counts; the lower cuts see colluders that lift only
        up to the highest one. False: off.
    consensus_raise_margin : float (default: 0.05)
        ``consensus_margin`` of the raise test: an honest label-skewed client's share under a cut stayed about 3.5-4
        points beyond the median client's over 16 rounds, where 0.02 left it out (BENCHMARKS_KD.md). Refused without
        ``consensus_raise``.
    """

    consensus_z: float = 0.0
    consensus_margin: float = MARGIN
    consensus_confidence: bool = False
    consensus_burst_z: float = 0.0
    consensus_raise: bool = False
    consensus_raise_margin: float = RAISE_MARGIN

    def check_consensus(self, prefix: str = "") -> None:
        """Raise :class:`~fl_kd.config.ConfigError` naming ``prefix + key`` for a value out of range."""
        check_range(f"{prefix}consensus_z", self.consensus_z, low=0.0)
        check_range(f"{prefix}consensus_margin", self.consensus_margin, low=0.0, high=1.0, high_open=True)
        check_range(f"{prefix}consensus_burst_z", self.consensus_burst_z, low=0.0)
        check_range(f"{prefix}consensus_raise_margin", self.consensus_raise_margin, low=0.0, high=1.0, high_open=True)
        for key in ("consensus_confidence", "consensus_raise"):
            require(
                isinstance(getattr(self, key), bool), f"{prefix}{key} must be true or false, got {getattr(self, key)!r}"
            )
        for key, default in (
            ("consensus_confidence", False),
            ("consensus_margin", MARGIN),
            ("consensus_burst_z", 0.0),
            ("consensus_raise", False),
        ):
            require(
                getattr(self, key) == default or self.consensus_z > 0,
                f"{prefix}{key} is a setting of the consensus screen: set {prefix}consensus_z too",
            )
        require(
            self.consensus_raise_margin == RAISE_MARGIN or self.consensus_raise,
            f"{prefix}consensus_raise_margin is a setting of the raise test: set {prefix}consensus_raise=true too",
        )

    def consensus_screen(self, num_classes: int) -> ConsensusScreen | None:
        """A fresh screen with these settings; None when ``consensus_z`` is 0."""
        if self.consensus_z <= 0:
            return None
        return ConsensusScreen(
            num_classes,
            self.consensus_z,
            self.consensus_confidence,
            self.consensus_margin,
            self.consensus_burst_z,
            self.consensus_raise,
            self.consensus_raise_margin,
        )
