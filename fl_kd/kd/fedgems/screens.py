"""The screens a FedGEMS server may run on its clients' unlabelled answers, built from its config: canaries, which
spend hidden labels (:mod:`fl_kd.kd.fedgems.canaries`), and the label-free consensus
(:mod:`fl_kd.kd.consensus`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor

from fl_kd.kd.consensus import ConsensusScreen
from fl_kd.kd.fedgems.canaries import CanaryScreen, canary_secret

if TYPE_CHECKING:
    from fl_kd.kd.fedgems.server_config import ServerDistillConfig

log = logging.getLogger(__name__)


def build_screens(
    config: ServerDistillConfig,
    num_classes: int,
    unlabelled_y: Tensor | None,
    num_unlabelled: int,
    seed: int,
    has_reliability_slice: bool,
) -> tuple[CanaryScreen | None, ConsensusScreen | None]:
    """The canary and consensus screens ``config`` asks for (None where it asks for none), over ``num_unlabelled``
    unlabelled samples whose labels ``unlabelled_y`` only the canaries use; the canaries compare each client with
    its accuracy on the held-out reliability slice, and their draw is keyed by the server's key
    (:func:`~fl_kd.kd.fedgems.canaries.canary_secret`)."""
    canaries = None
    if config.canaries:
        if unlabelled_y is None:
            raise ValueError("canaries need unlabelled_trust and the labels of the unlabelled samples they hide")
        if not has_reliability_slice:
            raise ValueError("canaries need a held-out reliability slice (reliability_on='held_out')")
        canaries = CanaryScreen(
            unlabelled_y, config.canaries, seed, canary_secret(), config.canary_z, config.canary_burst_z
        )
    consensus = config.consensus_screen(num_classes) if num_unlabelled > 0 else None
    if consensus is not None and 0 < config.unlabelled_per_round < num_unlabelled:
        log.warning(
            "strategy.consensus_z with strategy.unlabelled_per_round=%d of %d samples: each round asks another "
            "subset, so more and more of the samples asked have been distilled before, where clients agree more; "
            "a label-skewed honest client keeps less of that and can drift towards the screen in runs much longer "
            "than 8 rounds. strategy.unlabelled_per_round=0 asks every sample every round "
            "(strategy.logits_dtype=uint5 keeps the uplink; BENCHMARKS_KD.md).",
            config.unlabelled_per_round,
            num_unlabelled,
        )
    return canaries, consensus
