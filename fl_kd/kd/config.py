"""One configuration of a selective-distillation federation, read by the reference runner and the Flower apps.

The fields are flat and mirror ``conf/strategy/fedgems.yaml`` plus the top-level run settings, so a composed
Hydra config maps onto it one key at a time. Both runtimes derive every per-party setting from it through
:meth:`ReferenceConfig.server_config` and :meth:`ReferenceConfig.client_config`, never on their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fl_kd.kd.client import ClientTrainConfig
from fl_kd.kd.selection import WEIGHTINGS, Weighting
from fl_kd.kd.server import ServerDistillConfig
from fl_kd.kd.training import LOGITS_DTYPES
from fl_kd.models import DeviceProfile, DeviceTier


@dataclass
class ReferenceConfig:
    """Everything that defines a selective-distillation run.

    Attributes
    ----------
    device_profile : DeviceProfile | Mapping
        Server model and client tiers (a plain mapping is converted with ``DeviceProfile.from_dict``).
    dataset : str (default: "digits")
        Name for :func:`fl_kd.data.load_dataset`.
    dataset_root : str | None (default: None)
        Data folder; None uses the loader's default.
    num_clients : int (default: 10)
        Federation size.
    partition : str (default: "dirichlet")
        Partitioner name for :func:`fl_kd.partition.partition`.
    partition_params : dict (default: {"alpha": 0.5})
        The partitioner's own parameters.
    min_partition_size : int (default: 10)
        Smallest private set per client.
    transfer_size : int (default: 300)
        Labelled transfer-set size, taken from the training split and disjoint from all private data.
    personalised_test_size : int (default: 200)
        Size of each client's personalised test set (its own label distribution).
    rounds : int (default: 5)
        Federated rounds.
    fraction_fit : float (default: 1.0)
        Share of clients selected each round.
    epsilon, temperature : float (default: 0.75, 1.0)
        ``eps * CE + (1 - eps) * KD`` weight and KD temperature, for server and clients alike.
    weighting : str (default: "inverse_entropy")
        Client fusion rule on the server.
    server_epochs, server_batch_size, server_lr : (default: 4, 64, 0.05)
        Server distillation settings (E_srv, batch, SGD lr).
    client_distill_epochs : int (default: 1)
        Client distillation epochs on the transfer set (E_pub); local epochs, batch and lr come from the tier.
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings of all parties.
    logits_dtype : str (default: "float32")
        Wire format of logits in both directions ("float32" or "float16").
    checkpoint : str | None (default: None)
        Server checkpoint to start from (pretrained model or an earlier federation's server).
    seed : int (default: 0)
        Base seed of everything: splits, tiers, model inits, sampling, shuffling.
    device : str (default: "cpu")
        Torch device of all models.
    deterministic : bool (default: True)
        On a CUDA device, switch torch to deterministic kernels (process-wide) so that reruns, and the Flower
        simulation against this runner, agree bit for bit; CPU runs are deterministic without it.
    """

    device_profile: DeviceProfile
    dataset: str = "digits"
    dataset_root: str | None = None
    num_clients: int = 10
    partition: str = "dirichlet"
    partition_params: dict[str, Any] = field(default_factory=lambda: {"alpha": 0.5})
    min_partition_size: int = 10
    transfer_size: int = 300
    personalised_test_size: int = 200
    rounds: int = 5
    fraction_fit: float = 1.0
    epsilon: float = 0.75
    temperature: float = 1.0
    weighting: Weighting = "inverse_entropy"
    server_epochs: int = 4
    server_batch_size: int = 64
    server_lr: float = 0.05
    client_distill_epochs: int = 1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    logits_dtype: str = "float32"
    checkpoint: str | None = None
    seed: int = 0
    device: str = "cpu"
    deterministic: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.device_profile, Mapping):
            self.device_profile = DeviceProfile.from_dict(self.device_profile)
        if not isinstance(self.device_profile, DeviceProfile):
            raise ValueError(
                f"device_profile must be a DeviceProfile or mapping, got {type(self.device_profile)}"
            )
        if self.num_clients < 1 or self.rounds < 0 or self.transfer_size < 1:
            raise ValueError(
                f"need num_clients >= 1, rounds >= 0, transfer_size >= 1; got {self.num_clients}, "
                f"{self.rounds}, {self.transfer_size}"
            )
        if not 0.0 < self.fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must lie in (0, 1], got {self.fraction_fit}")
        if self.logits_dtype not in LOGITS_DTYPES:
            raise ValueError(f"logits_dtype must be one of {LOGITS_DTYPES}, got {self.logits_dtype!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        self.partition_params = dict(self.partition_params)
        self.server_config()  # validates the server settings early
        self.client_config(self.device_profile.tiers[0])

    def server_config(self) -> ServerDistillConfig:
        """Settings of the server's distillation phase."""
        return ServerDistillConfig(
            epochs=self.server_epochs,
            batch_size=self.server_batch_size,
            lr=self.server_lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epsilon=self.epsilon,
            temperature=self.temperature,
            weighting=self.weighting,
        )

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Training settings of a client in device ``tier``."""
        return ClientTrainConfig(
            local_epochs=tier.local_epochs,
            batch_size=tier.batch_size,
            lr=tier.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            distill_epochs=self.client_distill_epochs,
            epsilon=self.epsilon,
            temperature=self.temperature,
        )

    def to_json(self) -> str:
        """A JSON string of every field: how the config travels to Flower apps (run config holds scalars only)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["device_profile"] = self.device_profile.to_dict()
        # Key order is kept: the order of device tiers decides which clients get which tier.
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> ReferenceConfig:
        """The inverse of :meth:`to_json`; unknown keys are an error."""
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**values)
