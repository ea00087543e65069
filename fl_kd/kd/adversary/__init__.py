"""Malicious clients (group ``adversary``): behaviours that wrap the honest client half of any algorithm.

The strategy registry applies :func:`with_adversary` to every algorithm's builders, the one place from which the
in-process runner and the Flower apps build parties: a malicious client id gets a :class:`MaliciousClient` around
its honest half, and the server half gets the attack's figures measured beside it (:class:`AttackMetricsServer`).
No strategy knows about either; with ``adversary.name=none`` nothing is wrapped and a run is bit-identical to one
without this group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fl_kd.kd.adversary.behaviours import ADVERSARIES, Behaviour
from fl_kd.kd.adversary.camouflage import Camouflage
from fl_kd.kd.adversary.client import MaliciousClient
from fl_kd.kd.adversary.collusion import Colluding, ColludingServer
from fl_kd.kd.adversary.config import NONE, AdversaryConfig, malicious_clients, malicious_of
from fl_kd.kd.adversary.metrics import (
    AttackMetricsServer,
    ReportsFusionWeights,
    ReportsScreened,
    attack_success_rate,
)
from fl_kd.kd.adversary.references import Absent
from fl_kd.kd.adversary.skewed_colluders import SkewCollusionServer, SkewedColluders

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig
    from fl_kd.kd.federation import Federation
    from fl_kd.kd.roles import ClientRole, ServerRole

ClientBuilder = Callable[["ExperimentConfig", "Federation", int], "ClientRole"]
ServerBuilder = Callable[["ExperimentConfig", "Federation"], "ServerRole"]


def adversarial_client(build_client: ClientBuilder) -> ClientBuilder:
    """``build_client``, whose malicious client ids come wrapped in their behaviour."""

    def build(cfg: ExperimentConfig, federation: Federation, client_id: int) -> ClientRole:
        role = build_client(cfg, federation, client_id)
        if client_id not in malicious_of(cfg):
            return role
        behaviour = ADVERSARIES.get(cfg.adversary.name)(
            cfg.adversary, federation.data.num_classes, federation.transfer_y
        )
        return MaliciousClient(role, behaviour, cfg.seed, cfg.adversary.from_round)

    return build


def measured_server(build_server: ServerBuilder) -> ServerBuilder:
    """``build_server``, whose server half reports the attack's figures when the run has an adversary, and meets
    colluders' answers rewritten (the side channel of :mod:`fl_kd.kd.adversary.collusion`)."""

    def build(cfg: ExperimentConfig, federation: Federation) -> ServerRole:
        server = inner = build_server(cfg, federation)
        adversary = cfg.adversary
        if adversary.name == NONE:
            return server
        malicious = frozenset(malicious_of(cfg))
        test_set = (lambda round: federation.test_set(cfg, round)) if adversary.name == "targeted" else None
        server = AttackMetricsServer(server, malicious, test_set, adversary.source, adversary.target)
        behaviour = ADVERSARIES.get(adversary.name)
        if issubclass(behaviour, Colluding):
            colluding = behaviour(adversary, federation.data.num_classes, federation.transfer_y)
            root = getattr(inner, "root", None)
            replica = None if root is None else root.colluders_replica()
            calibration = None if root is None else root.colluders_calibration()
            server = ColludingServer(server, malicious, colluding.craft, replica, calibration)
        elif issubclass(behaviour, SkewedColluders):
            skewed = behaviour(adversary, federation.data.num_classes, federation.transfer_y)
            labelled = len(federation.transfer_idx)
            server = SkewCollusionServer(server, malicious, federation.data.num_classes, labelled, skewed.lie)
        return server

    return build


__all__ = [
    "ADVERSARIES",
    "Absent",
    "NONE",
    "AdversaryConfig",
    "AttackMetricsServer",
    "Behaviour",
    "Camouflage",
    "Colluding",
    "ColludingServer",
    "MaliciousClient",
    "ReportsFusionWeights",
    "ReportsScreened",
    "SkewCollusionServer",
    "SkewedColluders",
    "adversarial_client",
    "attack_success_rate",
    "malicious_clients",
    "malicious_of",
    "measured_server",
]
