"""One knowledge-distillation experiment: the schema of ``fl-kd-sim``'s config, read by every runtime.

:class:`ExperimentConfig` nests one dataclass per Hydra config group (``dataset``, ``partition``,
``device_profile``, ``strategy``, ``simulation``); the Hydra layer derives its groups from these classes and hands
the composed config back through :func:`fl_kd.config.from_mapping`, and the same JSON travels to the Flower apps.
The strategy's own class comes from the strategy registry (:mod:`fl_kd.kd.algorithm`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from fl_kd.config import MAX_SEED, ConfigError, check_range, from_mapping, require, to_mapping
from fl_kd.data.config import DatasetConfig
from fl_kd.kd.adversary.config import AdversaryConfig
from fl_kd.kd.algorithm import StrategyConfig, get_algorithm
from fl_kd.kd.evaluation import EvaluationConfig
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE
from fl_kd.models import DeviceProfile
from fl_kd.partition.config import PartitionConfig
from fl_kd.runtime import SimulationConfig

#: The largest ``max_abs_value``: every array a model reads is float32, and a bound beyond its range bounds nothing.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class TransferConfig:
    """The transfer set: shared data on which knowledge moves, taken from the training split.

    Both parts are drawn deterministically from the seed, disjoint from each other and from every client's private
    data. Strategies that judge clients by labels (FedGEMS) use the labelled part; strategies that only need inputs
    (DS-FL, FedDF, Fed-ET) use both parts' inputs and never read a label.

    Attributes
    ----------
    labelled : int (default: 300)
        Samples whose labels the server and the clients may use.
    unlabelled : int (default: 0)
        Samples whose labels nobody sees (inputs only).
    server_private : int (default: 0)
        Labelled samples the server alone holds, never sent to a client: FLTrust's root data set when above 0
        (``strategy.aggregation=fltrust``). Not part of the transfer set; drawn after it, from what would otherwise
        be the clients' data. In this simulation they come from the public dataset with the run's seed, as the
        whole split does, so a client that rebuilds the split could replay the root's training: they stand for data
        a real server holds alone, not for a secret kept from a client that has the dataset.
    """

    labelled: int = 300
    unlabelled: int = 0
    server_private: int = 0

    def __post_init__(self) -> None:
        check_range("transfer.labelled", self.labelled, low=0)
        check_range("transfer.unlabelled", self.unlabelled, low=0)
        check_range("transfer.server_private", self.server_private, low=0)
        require(self.size > 0, "the transfer set is empty: set transfer.labelled or transfer.unlabelled")

    @property
    def size(self) -> int:
        """Both parts together."""
        return self.labelled + self.unlabelled


@dataclass
class ExperimentConfig:
    """Everything that defines a knowledge-distillation run.

    Attributes
    ----------
    device_profile : DeviceProfile
        Server model and client tiers (named ones: :data:`fl_kd.models.DEVICE_PROFILES`, ``device_profile=<name>``).
    dataset, partition, strategy, simulation
        The config groups of the same names.
    transfer : TransferConfig
        Sizes of the labelled and unlabelled parts of the transfer set.
    evaluation : EvaluationConfig
        The test subset of the rounds before the last (the last always uses the whole test set).
    adversary : AdversaryConfig
        Malicious clients: their behaviour and share (``conf/adversary/*.yaml``; "none" by default).
    seed : int (default: 0)
        Base seed of everything: splits, tiers, model inits, sampling, shuffling; at most
        ``fl_kd.config.MAX_SEED`` (2**32 - 1).
    num_clients : int (default: 10)
        Federation size.
    personalised_test_size : int (default: 200)
        Size of each client's personalised test set (drawn to follow its own label distribution).
    device : str (default: "cpu")
        Torch device of all models.
    deterministic : bool (default: True)
        On a CUDA device, switch torch to deterministic kernels (process-wide) so that reruns, and the Flower
        simulation against the reference runner, agree bit for bit; CPU runs are deterministic without it.
    max_abs_value : float (default: 1e4)
        Largest absolute value of any float a client may send (logits, weights); an answer with a larger one is
        rejected for the round, like one with NaN or inf.
    """

    device_profile: DeviceProfile
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    strategy: StrategyConfig = field(default_factory=lambda: get_algorithm(StrategyConfig.name).config_class())
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    seed: int = 0
    num_clients: int = 10
    personalised_test_size: int = 200
    device: str = "cpu"
    deterministic: bool = True
    max_abs_value: float = DEFAULT_MAX_ABS_VALUE

    def __post_init__(self) -> None:
        require(isinstance(self.device_profile, DeviceProfile), "device_profile must be a DeviceProfile")
        require(isinstance(self.strategy, StrategyConfig), "strategy must be a StrategyConfig")
        check_range("num_clients", self.num_clients, low=1)
        self.strategy.check_experiment(self)
        require(
            self.transfer.server_private == 0 or self.strategy.reads_server_private(),
            f"transfer.server_private={self.transfer.server_private} is the root data set of FLTrust, which "
            f"strategy {self.strategy.name!r} does not use (strategy.aggregation=fltrust, FedAvg or FedAvg of the "
            "server model): the samples would be taken from the clients for nothing",
        )
        self.adversary.check_experiment(self)
        check_range("personalised_test_size", self.personalised_test_size, low=1)
        check_range("seed", self.seed, low=0, high=MAX_SEED)
        check_range("max_abs_value", self.max_abs_value, low=0, low_open=True, high=FLOAT32_MAX)
        require(
            _is_torch_device(self.device), f"device must be a torch device such as cpu or cuda:0, got {self.device!r}"
        )

    def to_json(self) -> str:
        """Every setting as JSON: how the config travels to Flower apps (their run config holds scalars only).

        Key order is kept: the order of device tiers decides which clients get which tier.
        """
        return json.dumps(to_mapping(self))

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        """The inverse of :meth:`to_json`; text that is no JSON object, unknown keys and bad values raise
        ``ConfigError``."""
        try:
            mapping = json.loads(text)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"the experiment config is not JSON ({type(err).__name__}: {err})") from None
        require(isinstance(mapping, dict), f"the experiment config must be a JSON object, got {type(mapping).__name__}")
        return from_mapping(cls, mapping)


def _is_torch_device(name: object) -> bool:
    """Whether torch reads ``name`` as a device (whether this machine has it is checked where models are built)."""
    try:
        torch.device(name)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        return False
    return True
