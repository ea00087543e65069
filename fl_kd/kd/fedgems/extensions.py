"""fl-kd's extensions of FedGEMS, in the order the knowledge benchmark's ablation adds them.

FedGEMS as published is :class:`~fl_kd.kd.fedgems.config.FedGEMSConfig` with its defaults: every extension is an
option of it, off by default, so that the ablation can show what each adds (``BENCHMARKS_KD.md``). The list lives
here, in the core, so that the benchmark's ``fedgems`` job and the ``strategy=fedgems_plus`` preset a user picks
are the same settings, declared once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fl_kd.kd.fedgems.config import FedGEMSConfig

PLUS = "fedgems_plus"
"""Name of the preset with every extension (``conf/strategy/fedgems_plus.yaml``)."""

SCREENED = "fedgems_plus_screened"
"""Name of the same preset behind the consensus screen (``conf/strategy/fedgems_plus_screened.yaml``)."""


@dataclass(frozen=True)
class Extension:
    """One step of the ablation: a name and the :class:`FedGEMSConfig` fields it sets (applied in order)."""

    name: str
    settings: Mapping[str, Any]


EXTENSIONS: tuple[Extension, ...] = (
    # The server judges its correctness on a labelled slice it never trains on: memorised labels no longer close
    # the query.
    Extension("held_out", {"correctness": "held_out"}),
    # Keep distilling the clients' soft targets where the server is right.
    Extension("distill_correct", {"distill_correct": True}),
    # Learn from the unlabelled transfer part, each client weighted by its per-class precision on the labelled part.
    Extension(
        "unlabelled_trust",
        {"unlabelled_trust": "class_reliability", "unlabelled_per_round": 1000, "logits_dtype": "float16"},
    ),
    # The server's knowledge reaches the clients on the unlabelled inputs too.
    Extension("client_unlabelled", {"client_unlabelled": True}),
    # Clients win their own label mix back after distilling ten classes.
    Extension("client_finetune", {"client_finetune_epochs": 1}),
    # One weight per client and class, fitted on the held-out half of the labelled part.
    Extension("learned_trust", {"reliability_on": "held_out", "held_out_fraction": 0.5, "unlabelled_trust": "learned"}),
    # Distil the fused teachers of the last 8 rounds with this round's.
    Extension("teacher_cache", {"unlabelled_cache": 8}),
    # The server shows the average of its weights (a horizon of about 100 steps).
    Extension("server_ema", {"server_ema": 0.99}),
    Extension("unlabelled_1500", {"unlabelled_per_round": 1500}),
    # A client answers with the average of its weights over the last half of each phase's steps.
    Extension("client_tail_average", {"client_tail_average": 0.5}),
    # A bound on each client step's gradient norm: distilling ten classes into a client that fits two no longer
    # leaves it a constant predictor.
    Extension("client_clip", {"client_max_grad_norm": 1.0}),
    # The model as distilled (before fine-tuning) serves inputs beyond the client's own classes.
    Extension("client_keep_distilled", {"client_keep_distilled": True}),
    # Local training keeps the server's knowledge: a client no longer unlearns the classes it does not hold.
    Extension("client_anchor", {"client_anchor": 1.0}),
    Extension("client_finetune_2", {"client_finetune_epochs": 2}),
    # Distil only the cached teachers of the last 3 rounds: the older ones come from weaker clients.
    Extension("teacher_cache_3", {"unlabelled_cache": 3}),
    # More of the clients' knowledge for less uplink: 5,000 unlabelled samples a round, answered as 8-bit
    # log-probabilities (60 kB a client and round, where 1,500 as float16 with their positions sent back took 70).
    Extension("unlabelled_5000", {"unlabelled_per_round": 5000, "logits_dtype": "uint8"}),
    # The server trains 8 epochs a round instead of 4, each over the labelled part and up to 10,000 cached teachers:
    # it fits the same teachers more closely (+0.4, +0.2 and +0.3 points at alpha 0.5, alpha 0.1 and with 2 classes
    # per client, three seeds).
    Extension("server_epochs_8", {"server_epochs": 8}),
)


def fedgems_plus() -> FedGEMSConfig:
    """fl-kd's selective distillation as benchmarked: FedGEMS as published with every extension, in order."""
    settings: dict[str, Any] = {}
    for extension in EXTENSIONS:
        settings.update(extension.settings)
    return dataclasses.replace(FedGEMSConfig(), **settings)


#: The label-free consensus screen with its confidence and raise tests (:mod:`fl_kd.kd.consensus`), for clients that
#: cannot all be trusted. Not an ablation step: when nobody lies it leaves every client in (the knowledge benchmark's
#: honest 8-round runs), and so changes no figure of it; BENCHMARKS_KD.md has the attackers it stops and those it
#: does not.
SCREEN: Mapping[str, Any] = {"consensus_z": 3.0, "consensus_confidence": True, "consensus_raise": True}


def fedgems_plus_screened() -> FedGEMSConfig:
    """:func:`fedgems_plus` with :data:`SCREEN`."""
    return dataclasses.replace(fedgems_plus(), **SCREEN)
