"""Build a knowledge-distillation federation from an :class:`~fl_kd.kd.config.ExperimentConfig`.

Data flow, one way: dataset -> transfer set (from the training split) -> partition of the private remainder
-> device tiers -> models. The reference runner and the Flower server and client apps all call these
functions, so the parties they build are the same by construction: same split, same tiers, same initial
weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from fl_kd.config import ConfigError
from fl_kd.data import DatasetSplits, load_dataset, personalised_test_indices, split_transfer_set
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.evaluation import evaluated_clients, round_test_indices
from fl_kd.kd.seeding import SERVER_ID, derive_seed, use_deterministic_algorithms
from fl_kd.models import DeviceTier, assign_tiers, build_model, check_input_shape
from fl_kd.partition import partition


@dataclass(frozen=True)
class Federation:
    """Who holds which data and which device tier.

    Attributes
    ----------
    data : DatasetSplits
        The loaded dataset.
    transfer_idx : ndarray
        ``(N_transfer,)`` training-split indices of the labelled part of the transfer set, in the order all
        parties use for positions.
    client_idx : list[ndarray]
        Per client, its training-split indices (disjoint from each other and from ``transfer_idx``).
    tiers : list[DeviceTier]
        Per client, its device tier.
    personalised_test_idx : list[ndarray]
        Per client, test-split indices following its label distribution.
    unlabelled_idx : ndarray
        ``(N_unlabelled,)`` training-split indices of the unlabelled part of the transfer set (its labels are never
        read by a party); public positions ``N_transfer..`` refer to it.
    server_idx : ndarray
        ``(N_server,)`` training-split indices of the server's private labelled set (``transfer.server_private``):
        never sent to a client, and not part of the transfer set.
    """

    data: DatasetSplits
    transfer_idx: NDArray[np.int64]
    client_idx: list[NDArray[np.int64]]
    tiers: list[DeviceTier]
    personalised_test_idx: list[NDArray[np.int64]]
    unlabelled_idx: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    server_idx: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.client_idx)

    @property
    def transfer_x(self) -> Tensor:
        """``(N_transfer, *input_shape)`` transfer inputs."""
        return self.data.x_train[torch.from_numpy(self.transfer_idx)]

    @property
    def transfer_y(self) -> Tensor:
        """``(N_transfer,)`` transfer labels."""
        return self.data.y_train[torch.from_numpy(self.transfer_idx)]

    @property
    def public_x(self) -> Tensor:
        """``(N_transfer + N_unlabelled, *input_shape)``: the inputs of the whole transfer set, labelled part first.

        Positions into it are the *public positions* that logit-sharing strategies use on the wire.
        """
        return self.data.x_train[torch.from_numpy(np.concatenate([self.transfer_idx, self.unlabelled_idx]))]

    @property
    def num_labelled(self) -> int:
        """Size of the labelled part (public positions ``0..num_labelled-1`` have labels)."""
        return int(self.transfer_idx.size)

    def server_data(self) -> tuple[Tensor, Tensor]:
        """The server's private labelled ``(x, y)`` (empty without ``transfer.server_private``)."""
        index = torch.from_numpy(self.server_idx)
        return self.data.x_train[index], self.data.y_train[index]

    def client_data(self, client_id: int) -> tuple[Tensor, Tensor]:
        """Private ``(x, y)`` of ``client_id``."""
        index = torch.from_numpy(self.client_idx[client_id])
        return self.data.x_train[index], self.data.y_train[index]

    def personalised_test(self, client_id: int) -> tuple[Tensor, Tensor]:
        """Personalised test ``(x, y)`` of ``client_id``."""
        index = torch.from_numpy(self.personalised_test_idx[client_id])
        return self.data.x_test[index], self.data.y_test[index]

    def test_set(self, cfg: ExperimentConfig, round: int) -> tuple[Tensor, Tensor]:
        """Test ``(x, y)`` that ``round`` is evaluated on: ``cfg.evaluation``'s subset, the whole set in the last."""
        index = round_test_indices(self.data.y_test.numpy(), cfg.evaluation, cfg.seed, round, cfg.strategy.rounds)
        if index is None:
            return self.data.x_test, self.data.y_test
        selected = torch.from_numpy(index)
        return self.data.x_test[selected], self.data.y_test[selected]

    def trend_test_set(self, cfg: ExperimentConfig, round: int) -> tuple[Tensor, Tensor] | None:
        """The last round's second test set: the subset of the rounds before it (None in other rounds, or with no
        subset). Scored on it too, the last round's server reads on the same scale as the trend, so a fall after
        the best round is measured on one test set."""
        if round < cfg.strategy.rounds:
            return None
        index = round_test_indices(self.data.y_test.numpy(), cfg.evaluation, cfg.seed, 0, cfg.strategy.rounds)
        if index is None:
            return None
        selected = torch.from_numpy(index)
        return self.data.x_test[selected], self.data.y_test[selected]

    def evaluated_clients(self, cfg: ExperimentConfig, round: int) -> list[int]:
        """Client ids evaluated in ``round`` (``cfg.evaluation``'s sample; all of them in the last round)."""
        return evaluated_clients(self.num_clients, cfg.evaluation, cfg.seed, round, cfg.strategy.rounds)

    def tier_names(self) -> dict[int, str]:
        """Client id -> tier name."""
        return {client_id: tier.name for client_id, tier in enumerate(self.tiers)}


@contextmanager
def _setting(what: str) -> Iterator[None]:
    """Turn a core function's ``ValueError`` about a size the user chose into a ``ConfigError`` naming the setting."""
    try:
        yield
    except ValueError as err:
        raise ConfigError(f"{what}: {err}") from None


def _draw(
    labels: NDArray[np.int64], pool: NDArray[np.int64], size: int, seed: int, what: str
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``size`` indices of ``pool`` drawn stratified by ``seed``, and the rest of ``pool`` (as it is when ``size`` is
    0); a size the pool cannot give is a ``ConfigError`` naming ``what``."""
    if size == 0:
        return np.zeros(0, dtype=np.int64), pool
    with _setting(what):
        picked, rest = split_transfer_set(labels[pool], size, seed=seed)
    return pool[picked], pool[rest]


def build_federation(cfg: ExperimentConfig, data: DatasetSplits | None = None) -> Federation:
    """Load the dataset and split it among transfer set and clients, and assign device tiers.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's configuration.
    data : DatasetSplits | None (default: None)
        An already loaded dataset (saves reloading it in every Flower client process); loaded from
        ``cfg.dataset`` when None.
    """
    if data is None:
        data = load_dataset(cfg.dataset.name, root=cfg.dataset.root, download=cfg.dataset.download)
    elif data.name != cfg.dataset.name:
        raise ValueError(f"given dataset {data.name!r} but the config names {cfg.dataset.name!r}")
    profile = cfg.device_profile
    for key, model in [
        ("server_model", profile.server_model),
        *((f"tiers.{t.name}.model", t.model) for t in profile.tiers),
    ]:
        with _setting(f"device_profile.{key}={model} on {data.name} (pick a device_profile made for its data)"):
            check_input_shape(model, data.input_shape)
    cfg.adversary.check_classes(data.num_classes)
    labels = data.y_train.numpy()
    # The sizes below are the user's settings, checked against this dataset only now that it is loaded.
    with _setting(f"transfer.labelled={cfg.transfer.labelled} on {data.name}"):
        transfer_idx, private_idx = split_transfer_set(
            labels, cfg.transfer.labelled, seed=derive_seed(cfg.seed, "transfer")
        )
    # Each drawn after the labelled part and only when asked, so a run without it splits exactly as before.
    transfer = cfg.transfer
    unlabelled_idx, private_idx = _draw(
        labels,
        private_idx,
        transfer.unlabelled,
        derive_seed(cfg.seed, "unlabelled_transfer"),
        f"transfer.unlabelled={transfer.unlabelled} beside the labelled part on {data.name}",
    )
    server_idx, private_idx = _draw(
        labels,
        private_idx,
        transfer.server_private,
        derive_seed(cfg.seed, "server_private"),
        f"transfer.server_private={transfer.server_private} beside the transfer set on {data.name}",
    )
    with _setting(f"num_clients={cfg.num_clients} with partition={cfg.partition.name} on {data.name}"):
        parts = partition(
            labels[private_idx],
            cfg.partition.name,
            num_clients=cfg.num_clients,
            seed=derive_seed(cfg.seed, "partition"),
            min_size=cfg.partition.min_size,
            **cfg.partition.params(),
        )
    client_idx = [private_idx[part].astype(np.int64) for part in parts]
    tiers = assign_tiers(cfg.device_profile, cfg.num_clients, seed=derive_seed(cfg.seed, "tiers"))
    test_labels = data.y_test.numpy()
    with _setting(f"personalised_test_size={cfg.personalised_test_size} on {data.name}"):
        personalised = [
            personalised_test_indices(
                test_labels,
                np.bincount(labels[idx], minlength=data.num_classes),
                cfg.personalised_test_size,
                seed=derive_seed(cfg.seed, client_id, "personalised_test"),
            )
            for client_id, idx in enumerate(client_idx)
        ]
    return Federation(
        data,
        transfer_idx.astype(np.int64),
        client_idx,
        tiers,
        personalised,
        unlabelled_idx.astype(np.int64),
        server_idx.astype(np.int64),
    )


def build_server_model(cfg: ExperimentConfig, federation: Federation) -> nn.Module:
    """The large server model of the device profile, freshly seeded by ``(seed, SERVER_ID)`` as in every strategy."""
    prepare_device(cfg)
    data = federation.data
    return build_model(
        cfg.device_profile.server_model,
        data.input_shape,
        data.num_classes,
        seed=derive_seed(cfg.seed, SERVER_ID, "model_init"),
    )


def build_client(cfg: ExperimentConfig, federation: Federation, client_id: int) -> DistillClient:
    """Client ``client_id`` with its tier's model (seeded by ``(seed, client_id)``), data and settings."""
    prepare_device(cfg)
    if not 0 <= client_id < federation.num_clients:
        raise ValueError(f"client_id must lie in [0, {federation.num_clients}), got {client_id}")
    tier = federation.tiers[client_id]
    data = federation.data
    model = build_model(
        tier.model, data.input_shape, data.num_classes, seed=derive_seed(cfg.seed, client_id, "model_init")
    )
    train_x, train_y = federation.client_data(client_id)
    return DistillClient(
        client_id,
        model,
        train_x,
        train_y,
        federation.transfer_x,
        federation.transfer_y,
        client_train_config(cfg, tier),
        seed=cfg.seed,
        device=cfg.device,
        public_x=federation.public_x,
    )


def client_train_config(cfg: ExperimentConfig, tier: DeviceTier) -> ClientTrainConfig:
    """Training settings of a client in ``tier`` under the run's strategy (which must define them)."""
    client_config = getattr(cfg.strategy, "client_config", None)
    if client_config is None:
        raise ValueError(f"strategy {cfg.strategy.name!r} defines no client training settings")
    return cast(ClientTrainConfig, client_config(tier))


def prepare_device(cfg: ExperimentConfig) -> None:
    # Every process that builds a party goes through here, runner and Flower apps alike.
    if cfg.deterministic and torch.device(cfg.device).type == "cuda":
        use_deterministic_algorithms()


def sample_clients(num_clients: int, fraction: float, seed: int, round: int) -> list[int]:
    """Client ids selected in ``round``: ``max(1, round(fraction * num_clients))`` of them, sorted.

    Drawn from ``(seed, round)`` only, so a Flower strategy and the runner select the same clients whatever
    happened before.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    count = max(1, min(num_clients, _round_half_up(fraction * num_clients)))
    rng = np.random.default_rng(derive_seed(seed, "sample_clients", round))
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (``round`` goes to even, surprising for 2.5 clients)."""
    return int(np.floor(value + 0.5))
