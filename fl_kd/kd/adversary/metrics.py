"""What an attack achieved, measured beside the server: never inside its fusion.

:class:`AttackMetricsServer` wraps the algorithm's server half; the server aggregates as always, without knowing
who is malicious, and the wrapper, which knows the ids from the config (:func:`malicious_of`), adds to the
round's figures:

* ``n_malicious_accepted``: malicious answers that passed screening;
* ``malicious_weight_share``: the share of the round's fusion weight that went to malicious clients, for servers
  that report their fusion weights (:class:`ReportsFusionWeights`);
* ``n_malicious_screened`` and ``n_honest_screened``: the malicious and the honest clients a screen of the server
  left out of the round's aggregation, for servers with a screen that say whom (:class:`ReportsScreened`), so that
  a screen's record is read by id, not inferred from its count;
* ``attack_success_rate`` (``targeted`` only): the share of the test set's source-class samples the server model
  classifies as the target class.

Both runtimes build the server through the strategy registry, which applies this wrapper, so the figures are
counted the same way in each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from fl_kd.kd.roles import Arrays, ServerRole, ServerWrapper


@runtime_checkable
class ReportsFusionWeights(Protocol):
    """A server that can say how much weight each client got in its last aggregation."""

    def fusion_weights(self) -> Mapping[int, float]:
        """Client id -> its share of the last round's fusion weight (shares sum to 1, or empty)."""
        ...


@runtime_checkable
class ReportsScreened(Protocol):
    """A server whose screens may leave clients out, and that can say which it left out of its last aggregation."""

    def screened_clients(self) -> Collection[int] | None:
        """Ids of the clients left out in the last round; None when no screen is on (no figure then)."""
        ...


def malicious_weight_share(weights: Mapping[int, float], malicious: frozenset[int]) -> float:
    """Sum of the malicious clients' shares (``math.fsum`` in id order; 0 without weights)."""
    return math.fsum(float(weights[cid]) for cid in sorted(weights) if cid in malicious)


def attack_success_rate(server: ServerRole, x_test: Tensor, y_test: Tensor, source: int, target: int) -> float:
    """Share of the test samples of class ``source`` that ``server`` predicts as ``target`` (NaN without any).

    The server's accuracy against labels that all say ``target`` is exactly that share.
    """
    index = torch.nonzero(y_test == source).flatten()
    if index.numel() == 0:
        return float("nan")
    return float(server.evaluate(x_test[index], torch.full_like(y_test[index], target)))


class AttackMetricsServer(ServerWrapper):
    """``server`` as it is, with the attack's figures added to each round's.

    Parameters
    ----------
    server : ServerRole
        The algorithm's server half.
    malicious : frozenset[int]
        The malicious client ids (known here, never to ``server``).
    test_set : Callable[[int], tuple[Tensor, Tensor]] | None
        The round's ``(x, y)`` test set (the runtimes' own, ``Federation.test_set``) on which to measure the attack
        success rate; None: not measured.
    source, target : int
        The targeted attack's classes.
    """

    def __init__(
        self,
        server: ServerRole,
        malicious: frozenset[int],
        test_set: Callable[[int], tuple[Tensor, Tensor]] | None = None,
        source: int = 0,
        target: int = 1,
    ) -> None:
        super().__init__(server)
        self.malicious = malicious
        self.test_set = test_set
        self.source, self.target = source, target

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """The server's aggregation and figures, then the attack's."""
        figures = dict(self.server.aggregate(round, answers))
        figures["n_malicious_accepted"] = sum(1 for cid in answers if cid in self.malicious)
        if isinstance(self.server, ReportsFusionWeights):
            figures["malicious_weight_share"] = malicious_weight_share(self.server.fusion_weights(), self.malicious)
        screened = self.server.screened_clients() if isinstance(self.server, ReportsScreened) else None
        if screened is not None:
            liars = self.malicious.intersection(screened)
            figures["n_malicious_screened"] = len(liars)
            figures["n_honest_screened"] = len(set(screened) - liars)
        if self.test_set is not None:
            x_test, y_test = self.test_set(round)
            figures["attack_success_rate"] = attack_success_rate(self.server, x_test, y_test, self.source, self.target)
        return figures
