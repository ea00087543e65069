"""The server's own update on its root data set, FLTrust's reference (``strategy.aggregation=fltrust``).

FLTrust (Cao, Fang, Liu and Gong, NDSS 2021) trusts a client's update as far as it points where the server's own
update on a small clean data set points. fl-kd's server already holds such a set: the labelled part of the transfer
set. That set is public, though, and so is the seed: colluders who know FLTrust can replay the server's training and
push exactly across its update. With ``transfer.server_private`` the root is instead a labelled set the server alone
holds, and the best the colluders can do is the same training on the labelled transfer set, data from the same
distribution (:meth:`RootUpdate.colluders_replica`). Each round a copy of the global model trains on it with the
batch size and learning rate of client 0's tier, for as many SGD steps as a client takes on average, as the paper
has the server take the clients' number of local iterations: FLTrust rescales every update to the length of the
server's, so a server that took fewer steps would shorten every round's step. It is seeded as the server's own
phase, so both runtimes get the same reference.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from numpy.typing import NDArray

from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, client_train_config
from fl_kd.kd.roles import Arrays
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.kd.weights import load_arrays, model_arrays
from fl_kd.models import build_model

#: The rule that needs this reference (a name beside :data:`fl_kd.kd.robust.ROBUST_RULES` for weight sharing).
FLTRUST = "fltrust"


class RootUpdate:
    """The server's trainer on the root data set (a ``DistillClient`` with id ``SERVER_ID``).

    Parameters
    ----------
    trainer : DistillClient
        A client whose private data is the root data set and whose model is of the clients' architecture.
    max_abs_value : float
        The run's bound on a weight (the global weights loaded each round are within it).
    private : bool (default: False)
        Whether the root data set is the server's own (``transfer.server_private``), which no client holds.
    public_twin : Callable[[slice], RootUpdate] | None (default: None)
        For a private root, the same training on a part of the labelled transfer set (None without one).
    """

    def __init__(
        self,
        trainer: DistillClient,
        max_abs_value: float,
        private: bool = False,
        public_twin: Callable[[slice], RootUpdate] | None = None,
    ) -> None:
        self.trainer = trainer
        self.max_abs_value = float(max_abs_value)
        self.private = private
        self.public_twin = public_twin

    def __call__(self, round: int, published: Mapping[str, NDArray[Any]]) -> Arrays:
        """The weights ``published`` (the round's global model) become after the server's local training."""
        load_arrays(self.trainer.model, published, self.max_abs_value)
        self.trainer.local_train(round)
        return model_arrays(self.trainer.model)

    def colluders_replica(self) -> RootUpdate | None:
        """What colluders who know FLTrust rebuild of this training from what they know: the same trainer where its
        data and seed are public (a copy), else the same training on the labelled transfer set, data from the root's
        distribution (None with fewer than two labelled samples: they must estimate the server's direction)."""
        if not self.private:
            return copy.deepcopy(self)
        return None if self.public_twin is None else self.public_twin(slice(None))

    def colluders_calibration(self) -> tuple[RootUpdate, RootUpdate] | None:
        """For a private root, the colluders' same training on two disjoint halves of the labelled transfer set (every
        other sample): how far one estimate of the server's update agrees with another (None where they know the
        update itself, or have too few labels)."""
        if self.public_twin is None:
            return None
        twin = self.public_twin
        return twin(slice(0, None, 2)), twin(slice(1, None, 2))


def root_update(
    cfg: ExperimentConfig, federation: Federation, architecture: str, public: slice | None = None
) -> RootUpdate:
    """The server's trainer of ``architecture`` (which every client trains) on its root data set: the server's
    private labelled set where the run has one, else the labelled transfer set; or, for the colluders, the ``public``
    part of the labelled transfer set. With the batch size and learning rate of client 0's tier, and the epochs that
    make its steps a round the clients' mean. ``WeightSharingConfig.check_experiment`` has refused a run with neither
    set."""
    data = federation.data
    private = federation.server_idx.size > 0 and public is None
    x, y = federation.server_data() if private else (federation.transfer_x, federation.transfer_y)
    if public is not None:
        x, y = x[public], y[public]
    configs = [client_train_config(cfg, tier) for tier in federation.tiers]
    client_steps = [
        c.local_epochs * math.ceil(federation.client_idx[cid].size / c.batch_size) for cid, c in enumerate(configs)
    ]
    config = configs[0]
    root_steps = math.ceil(len(y) / config.batch_size)
    epochs = max(1, round(sum(client_steps) / len(client_steps) / root_steps))
    model = build_model(
        architecture, data.input_shape, data.num_classes, seed=derive_seed(cfg.seed, SERVER_ID, "root_init")
    )
    trainer = DistillClient(
        SERVER_ID,
        model,
        x,
        y,
        x,  # a root trainer distils nothing: its transfer set is its own data
        y,
        dataclasses.replace(config, local_epochs=epochs),
        seed=_root_seed(cfg.seed, architecture, private, public),
        device=cfg.device,
        public_x=x,
    )
    # What the colluders can rebuild of a private root: the same training on parts of the labelled transfer set.
    twin = functools.partial(root_update, cfg, federation, architecture)
    return RootUpdate(trainer, cfg.max_abs_value, private, twin if private and federation.num_labelled >= 2 else None)


def _root_seed(seed: int, architecture: str, private: bool, public: slice | None) -> int:
    """The seed of a root trainer's batches: the server's own on the public set (which colluders can replay, as
    every run did before private roots), one of its own on its private set, and one per part for the colluders."""
    if public is not None:
        return derive_seed(seed, "root", architecture, "colluders", repr(public))
    return derive_seed(seed, "root", architecture, *(["private"] if private else []))
