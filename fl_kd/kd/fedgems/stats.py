"""What the FedGEMS server learnt from in a round: counts of each learning case, per-client teacher shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SelectionStats:
    """What the server learnt from in one distillation phase (counts from its final epoch).

    Attributes
    ----------
    round : int
        Federated round.
    n_self : int
        Samples the server got right, trained on the label and cached.
    n_cache : int
        Wrong samples distilled from the knowledge cache.
    n_clients : int
        Wrong, uncached samples distilled from the fused client teacher, and held-out samples distilled from it
        (right or wrong: the server's correctness is never used there).
    n_ce_only : int
        Wrong samples with neither cache nor a correct client: cross-entropy only. A held-out sample without a
        teacher is in none of the four counts (it is not trained on).
    loss : float
        Mean per-sample loss of the final epoch.
    num_answered : int
        Transfer samples for which at least one client sent logits.
    num_teacher : int
        Of those, samples with at least one qualifying client teacher.
    cache_size : int
        Filled entries of the knowledge cache after the phase.
    nonzero_weight_fraction : dict[int, float]
        Per client, the share of its answered samples on which it got a non-zero teacher weight (how much of a
        possibly malicious client's knowledge got through).
    weight_mass : dict[int, float]
        Per client, its summed teacher weight over the samples distilled this round (labelled and unlabelled): its
        share of the fused knowledge, whatever rule fused it.
    screened : set[int]
        Clients the screens (canaries, consensus) left out of this round's unlabelled teacher; by id, so that a
        simulation that knows who lies can tell liars screened from honest clients screened.
    extra : dict[str, float | int]
        Figures beyond FedGEMS' counts. Always: ``n_untrusted``, the honest samples (the held-out slice, else the
        labelled part) on which no client was trusted this round (no answering client was right there, or none was
        asked), and ``untrusted_accuracy``, the server's accuracy there at the start of the round. With the extensions:
        ``held_out_accuracy``: the server's accuracy on the held-out slice at the start
        of the round (before it distils); ``n_dark``: samples the server got right and still distilled from the
        clients (final epoch); ``n_unlabelled``: unlabelled samples with a client teacher this round;
        ``unlabelled_distilled`` (with ``unlabelled_cache``): unlabelled samples distilled, this round's teacher and
        the cached ones together; ``unlabelled_loss``: mean KD loss on the distilled ones in the final epoch.
    """

    round: int
    n_self: int = 0
    n_cache: int = 0
    n_clients: int = 0
    n_ce_only: int = 0
    loss: float = 0.0
    num_answered: int = 0
    num_teacher: int = 0
    cache_size: int = 0
    nonzero_weight_fraction: dict[int, float] = field(default_factory=dict)
    weight_mass: dict[int, float] = field(default_factory=dict)
    screened: set[int] = field(default_factory=set)
    extra: dict[str, float | int] = field(default_factory=dict)

    def round_metrics(self) -> dict[str, float | int]:
        """The figures a round's metric row reports (see :func:`fl_kd.kd.metrics.round_metrics`)."""
        return {
            "n_self": self.n_self,
            "n_cache": self.n_cache,
            "n_clients": self.n_clients,
            "n_ce_only": self.n_ce_only,
            "num_answered": self.num_answered,
            "cache_size": self.cache_size,
            "server_loss": float(self.loss),
        } | dict(self.extra)

    def as_metrics(self) -> dict[str, float]:
        """Flat scalar metrics (per-client fractions left out) for logging."""
        values = asdict(self)
        values.pop("nonzero_weight_fraction")
        values.pop("weight_mass")
        values.pop("screened")
        extra = values.pop("extra")
        return {key: float(value) for key, value in (values | extra).items()}
