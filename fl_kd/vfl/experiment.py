"""Build and run a whole vertical-FL experiment from one plain config.

``VFLConfig`` is the single description of a run (dataset, column split, models, defence, training settings);
``build_experiment`` turns it into parties, ``run_vfl`` trains, evaluates and scores attacks. A Hydra entry
point passes its composed config as a dict; a Flower ServerApp can call ``build_experiment`` and drive the
same parties batch by batch through ``FeatureParty.embed`` / ``LabelParty.train_step`` /
``FeatureParty.apply_gradient``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from fl_kd.vfl.defences import build_defence
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.models import BottomMLP, build_top_model
from fl_kd.vfl.parties import FeatureParty, LabelParty
from fl_kd.vfl.split import VerticalSplit, make_split
from fl_kd.vfl.trainer import TrainingHistory, evaluate_vfl, train_vfl


class Dataset(Protocol):
    """What an experiment reads from ``fl_kd.data.DatasetSplits`` (read-only, so frozen dataclasses fit)."""

    @property
    def x_train(self) -> Tensor: ...
    @property
    def y_train(self) -> Tensor: ...
    @property
    def x_test(self) -> Tensor: ...
    @property
    def y_test(self) -> Tensor: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def input_shape(self) -> tuple[int, ...]: ...


@dataclass
class VFLConfig:
    """Everything that defines one vertical-FL run.

    Attributes
    ----------
    dataset : str (default: "breast_cancer")
        Name for ``fl_kd.data.load_dataset``.
    data_root : str or None (default: None)
        Folder of datasets that are not bundled.
    num_parties : int (default: 2)
        Parties that hold features, the label party included when ``label_party_features``.
    label_party_features : bool (default: True)
        The label party also holds the last column block and a bottom model (the usual two-party setting,
        where the active party has features too); otherwise it holds labels only.
    split : str or list of index lists (default: "halves")
        Column split scheme, see ``fl_kd.vfl.split.make_split``.
    embedding_dim : int or None (default: None)
        Bottom-model output size; 16 for an ``"mlp"`` top, the number of classes for a ``"sum"`` top.
    bottom_hidden : Sequence[int] (default: (64,))
        Hidden widths of every bottom MLP.
    top : str (default: "mlp")
        ``"mlp"`` (trainable head) or ``"sum"`` (non-trainable sum of party logits).
    top_hidden : Sequence[int] (default: ())
        Hidden widths of a trainable top.
    defence : str (default: "none")
        Name for ``fl_kd.vfl.defences.build_defence``.
    defence_params : dict (default: {})
        Keyword parameters of the defence.
    epochs, batch_size : int (default: 5, 64)
    lr : float (default: 0.01)
    optimizer : str (default: "adam")
        ``"adam"`` or ``"sgd"`` for every party.
    seed : int (default: 0)
        Seeds models, shuffling, subsampling and the defence.
    max_train_samples, max_test_samples : int or None (default: None)
        Seeded subsamples, to keep large datasets (Fashion-MNIST) quick.
    attacker_party : int (default: 0)
        Feature party that runs the attacks.
    batches_per_message : int (default: 1)
        Mini-batches exchanged per round of messages (see ``fl_kd.vfl.trainer``); 1 is plain split training.
    """

    dataset: str = "breast_cancer"
    data_root: str | None = None
    num_parties: int = 2
    label_party_features: bool = True
    split: str | list[list[int]] = "halves"
    embedding_dim: int | None = None
    bottom_hidden: Sequence[int] = (64,)
    top: str = "mlp"
    top_hidden: Sequence[int] = ()
    defence: str = "none"
    defence_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "adam"
    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    attacker_party: int = 0
    batches_per_message: int = 1

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> VFLConfig:
        """Build from a plain mapping (e.g. a resolved Hydra config); unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VFL config keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(values))


@dataclass
class VFLExperiment:
    """The built parties of one run plus the held-out data each party would hold.

    Attributes
    ----------
    config : VFLConfig
    split : VerticalSplit
        Columns of every feature-holding party (feature parties first, then the label party if it holds any).
    feature_parties : list[FeatureParty]
    label_party : LabelParty
    train_labels : Tensor
        Aligned training labels ``(N,)``, indexed by sample id; only the evaluation harness uses them to score
        attacks.
    test_party_features : list[Tensor]
        Each feature party's test features ``(N_test, F_k)``.
    test_label_features : Tensor or None
        The label party's own test features ``(N_test, F_a)``.
    test_labels : Tensor
        ``(N_test,)``.
    """

    config: VFLConfig
    split: VerticalSplit
    feature_parties: list[FeatureParty]
    label_party: LabelParty
    train_labels: Tensor
    test_party_features: list[Tensor]
    test_label_features: Tensor | None
    test_labels: Tensor

    @property
    def num_train(self) -> int:
        """Number of aligned training samples."""
        return int(self.train_labels.shape[0])

    def train(self, attacks: Sequence[FeaturePartyAttack] = ()) -> TrainingHistory:
        """Run ``train_vfl`` with the config's epochs, batch size, seed and attacker."""
        return train_vfl(
            self.feature_parties,
            self.label_party,
            self.num_train,
            self.config.epochs,
            self.config.batch_size,
            self.config.seed,
            attacks=attacks,
            attacker_party=self.config.attacker_party,
            batches_per_message=self.config.batches_per_message,
        )

    def evaluate(self) -> dict[str, Any]:
        """Main-task metrics on the test split (see ``evaluate_vfl``)."""
        return evaluate_vfl(
            self.feature_parties,
            self.label_party,
            self.test_party_features,
            self.test_labels,
            self.test_label_features,
        )


@dataclass(frozen=True)
class VFLData:
    """The samples of one run cut into the columns each party holds, before any party is built.

    A Flower ClientApp builds only its own party from this, so it is split from ``build_experiment``.

    Attributes
    ----------
    split : VerticalSplit
        Columns of every feature-holding party (feature parties first, then the label party if it holds any).
    train_ids, test_ids : np.ndarray
        Sorted int64 row ids ``(N,)`` and ``(N_test,)`` of the kept samples in the dataset's train and test
        splits: the sample ids the parties align on.
    train_columns, test_columns : list[Tensor]
        One ``(N, F_k)`` / ``(N_test, F_k)`` matrix per feature-holding party.
    train_labels, test_labels : Tensor
        int64 ``(N,)`` and ``(N_test,)``.
    num_classes : int
    """

    split: VerticalSplit
    train_ids: np.ndarray
    test_ids: np.ndarray
    train_columns: list[Tensor]
    test_columns: list[Tensor]
    train_labels: Tensor
    test_labels: Tensor
    num_classes: int


def num_feature_parties(config: VFLConfig) -> int:
    """Number of passive parties: every feature-holding party except the label party when it holds features."""
    return config.num_parties - 1 if config.label_party_features else config.num_parties


def embedding_size(config: VFLConfig, num_classes: int) -> int:
    """Bottom-model output size: the configured one, else the class count for a sum top and 16 otherwise."""
    if config.embedding_dim is not None:
        return config.embedding_dim
    return num_classes if config.top == "sum" else 16


def _subsample(x: Tensor, y: Tensor, limit: int | None, rng: np.random.Generator) -> tuple[np.ndarray, Tensor, Tensor]:
    if limit is None or limit >= len(y):
        return np.arange(len(y), dtype=np.int64), x, y
    index = np.sort(rng.choice(len(y), size=limit, replace=False)).astype(np.int64)
    rows = torch.from_numpy(index)
    return index, x[rows], y[rows]


def prepare_data(config: VFLConfig | Mapping[str, Any], data: Dataset | None = None) -> VFLData:
    """Load (or take) the data, subsample it as configured and cut it into per-party columns.

    ``data`` replaces loading ``config.dataset`` (tests pass synthetic tensors); anything with the fields of
    ``fl_kd.data.DatasetSplits`` used here will do.
    """
    if not isinstance(config, VFLConfig):
        config = VFLConfig.from_mapping(config)
    if data is None:
        # Imported here so that the VFL core runs on given tensors without the data package's loaders.
        from fl_kd.data import load_dataset

        data = cast(Dataset, load_dataset(config.dataset, root=config.data_root))
    min_parties = 2 if config.label_party_features else 1
    if config.num_parties < min_parties:
        raise ValueError(
            f"num_parties={config.num_parties} leaves no feature party; need at least {min_parties} "
            f"when label_party_features={config.label_party_features}"
        )
    rng = np.random.default_rng(config.seed)
    train_ids, x_train, y_train = _subsample(data.x_train, data.y_train, config.max_train_samples, rng)
    test_ids, x_test, y_test = _subsample(data.x_test, data.y_test, config.max_test_samples, rng)
    split = make_split(data.input_shape, config.split, config.num_parties)
    if split.num_parties != config.num_parties:
        raise ValueError(f"split {config.split!r} gives {split.num_parties} parties, config says {config.num_parties}")
    return VFLData(
        split=split,
        train_ids=train_ids,
        test_ids=test_ids,
        train_columns=split.apply(x_train),
        test_columns=split.apply(x_test),
        train_labels=y_train.to(torch.int64),
        test_labels=y_test.to(torch.int64),
        num_classes=int(data.num_classes),
    )


def build_feature_party(config: VFLConfig, party: int, features: Tensor, num_classes: int) -> FeatureParty:
    """Feature party ``party`` with its freshly initialised bottom model over ``features`` ``(N, F)``.

    Initialisation depends on ``config.seed`` and ``party`` only, so every runtime builds the same party.
    """
    bottom = BottomMLP(
        features.shape[1],
        embedding_size(config, num_classes),
        hidden=tuple(config.bottom_hidden),
        seed=config.seed + party,
    )
    return FeatureParty(party, bottom, features, config.lr, config.seed + party, config.optimizer)


def build_label_party(
    config: VFLConfig,
    features: Tensor | None,
    labels: Tensor,
    num_classes: int,
    defence_state: Mapping[str, Any] | None = None,
) -> LabelParty:
    """The label party over its own features ``(N, F_a)`` (``None`` when it holds labels only) and labels ``(N,)``.

    ``defence_state`` restores a saved defence instead of setting it up afresh (see ``LabelParty``).
    """
    embedding_dim = embedding_size(config, num_classes)
    if config.label_party_features != (features is not None):
        raise ValueError(f"label_party_features={config.label_party_features} but features are {features is not None}")
    own_bottom = None
    if features is not None:
        own_bottom = BottomMLP(
            features.shape[1],
            embedding_dim,
            hidden=tuple(config.bottom_hidden),
            seed=config.seed + config.num_parties - 1,
        )
    top = build_top_model(
        config.top,
        [embedding_dim] * config.num_parties,
        num_classes,
        hidden=tuple(config.top_hidden),
        seed=config.seed + 1000,
    )
    return LabelParty(
        own_bottom,
        features,
        top,
        labels,
        defence=build_defence(config.defence, **dict(config.defence_params)),
        lr=config.lr,
        seed=config.seed,
        optimizer=config.optimizer,
        defence_state=defence_state,
    )


def build_experiment(config: VFLConfig | Mapping[str, Any], data: Dataset | None = None) -> VFLExperiment:
    """Build all parties for ``config``.

    ``data`` replaces loading ``config.dataset`` (tests pass synthetic tensors); anything with the fields of
    ``fl_kd.data.DatasetSplits`` used here will do.
    """
    if not isinstance(config, VFLConfig):
        config = VFLConfig.from_mapping(config)
    prepared = prepare_data(config, data)
    count = num_feature_parties(config)
    feature_parties = [
        build_feature_party(config, party, prepared.train_columns[party], prepared.num_classes)
        for party in range(count)
    ]
    own_features = prepared.train_columns[-1] if config.label_party_features else None
    label_party = build_label_party(config, own_features, prepared.train_labels, prepared.num_classes)
    return VFLExperiment(
        config=config,
        split=prepared.split,
        feature_parties=feature_parties,
        label_party=label_party,
        train_labels=prepared.train_labels,
        test_party_features=prepared.test_columns[:count],
        test_label_features=prepared.test_columns[-1] if config.label_party_features else None,
        test_labels=prepared.test_labels,
    )


def run_vfl(
    config: VFLConfig | Mapping[str, Any],
    attacks: Sequence[FeaturePartyAttack] = (),
    data: Dataset | None = None,
) -> dict[str, Any]:
    """Build, train and evaluate one run; score each attack against the true training labels.

    Returns
    -------
    dict[str, Any]
        ``mp`` (main-task test accuracy), the other ``evaluate_vfl`` metrics, ``train_loss`` per epoch,
        ``skipped_batches``, ``failed_updates``, ``attacks`` (``attack.name`` -> ``attack.result(train_labels)``),
        ``seconds`` and the resolved ``config``.
    """
    start = time.perf_counter()
    experiment = build_experiment(config, data)
    history = experiment.train(attacks)
    metrics = experiment.evaluate()
    attack_results: dict[str, Any] = {}
    for index, attack in enumerate(attacks):
        key = attack.name if attack.name not in attack_results else f"{attack.name}_{index}"
        attack_results[key] = attack.result(experiment.train_labels)
    return {
        "mp": metrics["accuracy"],
        **metrics,
        "train_loss": history.epoch_losses,
        "skipped_batches": len(history.skipped_batches),
        "failed_updates": len(history.failed_updates),
        "attacks": attack_results,
        "seconds": time.perf_counter() - start,
        "config": asdict(experiment.config),
    }
