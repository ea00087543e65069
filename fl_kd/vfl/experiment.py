"""Build and run a whole vertical-FL experiment from one config.

:class:`~fl_kd.vfl.config.VFLRunConfig` is the single description of a run (dataset, column split, models,
defence, attacks, training settings); ``build_experiment`` turns it into parties, ``run_vfl`` trains, evaluates
and scores attacks. A Flower ClientApp builds only its own party from the same config
(``prepare_data``, ``build_feature_party``, ``build_label_party``) and drives it message by message through
``FeatureParty.embed`` / ``LabelParty.train_step`` / ``FeatureParty.apply_gradient``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from fl_kd.config import from_mapping
from fl_kd.runtime import one_torch_thread
from fl_kd.vfl.attacks import build_attacks, score_attacks
from fl_kd.vfl.config import DefenceConfig, VFLRunConfig
from fl_kd.vfl.defences import build_defence
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import defence_scores
from fl_kd.vfl.models import BottomMLP, build_top_model
from fl_kd.vfl.parties import FeatureParty, LabelParty
from fl_kd.vfl.results import build_results
from fl_kd.vfl.secret import data_secret
from fl_kd.vfl.split import VerticalSplit, make_split
from fl_kd.vfl.trainer import EpochReport, TrainingHistory, evaluate_vfl, evaluation_due, train_vfl


def as_config(config: VFLRunConfig | Mapping[str, Any]) -> VFLRunConfig:
    """``config`` itself, or the run config built strictly from a plain (nested) mapping."""
    return from_mapping(VFLRunConfig, config)


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
class VFLExperiment:
    """The built parties of one run plus the held-out data each party would hold.

    Attributes
    ----------
    config : VFLRunConfig
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

    config: VFLRunConfig
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

    def train(self, attacks: Sequence[FeaturePartyAttack] = (), report: EpochReport | None = None) -> TrainingHistory:
        """Run ``train_vfl`` with the config's settings, evaluating MP every ``training.evaluate_every`` epochs."""
        training = self.config.training

        def evaluate(epoch: int) -> float | None:
            if evaluation_due(epoch, training.evaluate_every, training.epochs):
                return float(self.evaluate()["accuracy"])
            return None

        return train_vfl(
            self.feature_parties,
            self.label_party,
            self.num_train,
            training.epochs,
            training.batch_size,
            self.config.seed,
            attacks=attacks,
            attacker_party=self.config.attacker_party,
            batches_per_message=training.batches_per_message,
            evaluate=evaluate,
            report=report,
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


def _subsample(x: Tensor, y: Tensor, limit: int | None, rng: np.random.Generator) -> tuple[np.ndarray, Tensor, Tensor]:
    if limit is None or limit >= len(y):
        return np.arange(len(y), dtype=np.int64), x, y
    index = np.sort(rng.choice(len(y), size=limit, replace=False)).astype(np.int64)
    rows = torch.from_numpy(index)
    return index, x[rows], y[rows]


def prepare_data(config: VFLRunConfig | Mapping[str, Any], data: Dataset | None = None) -> VFLData:
    """Load (or take) the data, subsample it as configured and cut it into per-party columns.

    ``data`` replaces loading ``config.dataset`` (tests pass synthetic tensors); anything with the fields of
    ``fl_kd.data.DatasetSplits`` used here will do.
    """
    config = as_config(config)
    if data is None:
        # Imported here so that the VFL core runs on given tensors without the data package's loaders.
        from fl_kd.data import load_dataset

        data = cast(Dataset, load_dataset(config.dataset.name, root=config.dataset.root))
    rng = np.random.default_rng(config.seed)
    training, split_config = config.training, config.vfl_split
    train_ids, x_train, y_train = _subsample(data.x_train, data.y_train, training.max_train_samples, rng)
    test_ids, x_test, y_test = _subsample(data.x_test, data.y_test, training.max_test_samples, rng)
    split = make_split(data.input_shape, split_config.scheme, split_config.num_parties)
    if split.num_parties != split_config.num_parties:
        raise ValueError(
            f"split {split_config.scheme!r} gives {split.num_parties} parties, config says {split_config.num_parties}"
        )
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


def build_feature_party(config: VFLRunConfig, party: int, features: Tensor, num_classes: int) -> FeatureParty:
    """Feature party ``party`` with its freshly initialised bottom model over ``features`` ``(N, F)``.

    Initialisation depends on ``config.seed`` and ``party`` only, so every runtime builds the same party.
    """
    bottom = BottomMLP(
        features.shape[1],
        config.vfl_model.embedding_size(num_classes),
        hidden=tuple(config.vfl_model.bottom_hidden),
        seed=config.seed + party,
    )
    training = config.training
    return FeatureParty(party, bottom, features, training.lr, config.seed + party, training.optimizer)


def build_label_party(
    config: VFLRunConfig,
    features: Tensor | None,
    labels: Tensor,
    num_classes: int,
    defence_state: Mapping[str, Any] | None = None,
    secret: int | None = None,
) -> LabelParty:
    """The label party over its own features ``(N, F_a)`` (``None`` when it holds labels only) and labels ``(N,)``.

    ``defence_state`` restores a saved defence instead of setting it up afresh (see ``LabelParty``). ``secret`` is
    the label party's secret (:func:`fl_kd.vfl.secret.label_party_secret`); when omitted it is the digest of
    ``labels`` and ``features`` (:func:`fl_kd.vfl.secret.data_secret`), as on a node whose config names none.
    """
    model, split = config.vfl_model, config.vfl_split
    embedding_dim = model.embedding_size(num_classes)
    if split.label_party_features != (features is not None):
        raise ValueError(f"label_party_features={split.label_party_features} but features are {features is not None}")
    own_bottom = None
    if features is not None:
        own_bottom = BottomMLP(
            features.shape[1],
            embedding_dim,
            hidden=tuple(model.bottom_hidden),
            seed=config.seed + split.num_parties - 1,
        )
    top = build_top_model(
        model.top,
        [embedding_dim] * split.num_parties,
        num_classes,
        hidden=tuple(model.top_hidden),
        seed=config.seed + 1000,
    )
    return LabelParty(
        own_bottom,
        features,
        top,
        labels,
        defence=build_defence(config.defence.name, **config.defence.params),
        lr=config.training.lr,
        seed=config.seed,
        optimizer=config.training.optimizer,
        defence_state=defence_state,
        secret=data_secret(labels, features) if secret is None else secret,
    )


def build_experiment(config: VFLRunConfig | Mapping[str, Any], data: Dataset | None = None) -> VFLExperiment:
    """Build all parties for ``config``.

    ``data`` replaces loading ``config.dataset`` (tests pass synthetic tensors); anything with the fields of
    ``fl_kd.data.DatasetSplits`` used here will do.
    """
    config = as_config(config)
    prepared = prepare_data(config, data)
    config.check_num_classes(prepared.num_classes)
    config.check_num_train(len(prepared.train_ids))
    count = config.num_feature_parties
    feature_parties = [
        build_feature_party(config, party, prepared.train_columns[party], prepared.num_classes)
        for party in range(count)
    ]
    own = config.vfl_split.label_party_features
    label_party = build_label_party(
        config, prepared.train_columns[-1] if own else None, prepared.train_labels, prepared.num_classes
    )
    return VFLExperiment(
        config=config,
        split=prepared.split,
        feature_parties=feature_parties,
        label_party=label_party,
        train_labels=prepared.train_labels,
        test_party_features=prepared.test_columns[:count],
        test_label_features=prepared.test_columns[-1] if own else None,
        test_labels=prepared.test_labels,
    )


@one_torch_thread()
def run_vfl(
    config: VFLRunConfig | Mapping[str, Any],
    attacks: Sequence[FeaturePartyAttack] | None = None,
    data: Dataset | None = None,
    report: EpochReport | None = None,
) -> dict[str, Any]:
    """Build, train and evaluate one run in-process; score each attack against the true training labels.

    Parameters
    ----------
    config : VFLRunConfig | Mapping[str, Any]
    attacks : Sequence[FeaturePartyAttack] | None (default: None)
        Attack objects to run instead of the config's ``attack`` (results are keyed by ``attack.name``).
    data : Dataset | None (default: None)
        Tensors to use instead of loading ``config.dataset``.
    report : EpochReport | None (default: None)
        Receives each epoch's row.

    Returns
    -------
    dict[str, Any]
        The results of :func:`fl_kd.vfl.results.build_results`, as the Flower server returns them.
    """
    start = time.perf_counter()
    experiment = build_experiment(config, data)
    if attacks is None:
        by_name = build_attacks(experiment.config.attack)
    else:
        by_name = {}
        for index, attack in enumerate(attacks):
            by_name[attack.name if attack.name not in by_name else f"{attack.name}_{index}"] = attack
    history = experiment.train(list(by_name.values()), report)
    return build_results(
        experiment.config,
        history,
        experiment.evaluate(),
        score_attacks(by_name, experiment.train_labels),
        num_train=experiment.num_train,
        seconds=time.perf_counter() - start,
    )


def mp_star_of(config: VFLRunConfig, mp: float) -> tuple[float | None, str]:
    """MP* for DCS and where it came from: given, this run (no defence), a baseline run, or unavailable."""
    if config.scoring.mp_star is not None:
        return config.scoring.mp_star, "given"
    if config.defence.name == "none":
        return mp, "this run (no defence)"
    if config.scoring.baseline:
        vanilla = replace(config, defence=DefenceConfig(), attack={})
        return float(run_vfl(vanilla)["mp"]), "baseline run without defence (in-process)"
    return None, "unavailable: set scoring.mp_star or scoring.baseline=true"


def add_defence_scores(results: dict[str, Any], config: VFLRunConfig) -> dict[str, Any]:
    """Add ``mp_star``, ``mp_star_source`` and, when MP* is known, ``dcs`` (VFLAIR) to a run's results."""
    mp_star, source = mp_star_of(config, float(results["mp"]))
    results["mp_star"], results["mp_star_source"] = mp_star, source
    if mp_star is not None:
        results["dcs"] = defence_scores(results, mp_star, config.scoring.beta)
    return results
