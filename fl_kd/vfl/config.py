"""The settings of one vertical-FL run, declared once: the schema of `fl-kd-vfl`, of the Flower apps and of Python.

:class:`VFLRunConfig` nests one dataclass per Hydra config group (``dataset``, ``vfl_split``, ``vfl_model``,
``defence``, ``attack``, ``training``, ``scoring``, ``simulation``). The Hydra groups in ``conf/`` extend schema
nodes stored from these defaults; the Flower apps receive the same config as JSON
(:func:`fl_kd.vfl.protocol.encode_config`). Each class checks its own values and raises
:class:`~fl_kd.config.ConfigError` naming the key; choices come from the core's registries.

Defence and attack parameters are the keyword arguments of the registered classes: their names, types and
defaults are read from the constructor signatures (:func:`default_params`), so they too are declared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fl_kd.config import MAX_SEED, ConfigError, absolute_path, check_choice, check_range, require
from fl_kd.data.config import DatasetConfig
from fl_kd.protocol import MAX_RECORD_ARRAYS
from fl_kd.runtime import SimulationConfig
from fl_kd.vfl.attacks import attack_class, available_attacks, build_attack
from fl_kd.vfl.defences import available_defences, build_defence, defence_class
from fl_kd.vfl.models import available_top_models
from fl_kd.vfl.optimizers import available_optimizers
from fl_kd.vfl.params import check_params, default_params
from fl_kd.vfl.split import FIXED_PARTIES, available_split_schemes

#: Attacks of a default run: one on the gradients, one on the trained bottom model.
DEFAULT_ATTACKS = ("direct_label_inference", "passive_model_completion")


@dataclass
class SplitConfig:
    """Which feature columns each party holds (group ``vfl_split``).

    Attributes
    ----------
    scheme : str | list[list[int]] (default: "halves")
        A registered scheme (:func:`fl_kd.vfl.split.available_split_schemes`): ``halves`` gives the first half of
        the columns (for images the left half of every row) to the feature party and the second half to the
        label party; ``blocks`` cuts ``num_parties`` contiguous blocks (vertical image stripes). Or explicit flat
        column lists, one per party.
    num_parties : int (default: 2)
        Parties that hold features, the label party included when ``label_party_features``.
    label_party_features : bool (default: True)
        The label party also holds the last column block and a bottom model (the usual two-party setting, where
        the active party has features too); otherwise it holds labels only.
    """

    scheme: str | list[list[int]] = "halves"
    num_parties: int = 2
    label_party_features: bool = True

    def __post_init__(self) -> None:
        check_range("vfl_split.num_parties", self.num_parties, low=1)
        if isinstance(self.scheme, str):
            check_choice("vfl_split.scheme", self.scheme, available_split_schemes())
            fixed = FIXED_PARTIES.get(self.scheme, self.num_parties)
            require(
                fixed == self.num_parties,
                f"vfl_split.scheme={self.scheme} needs num_parties={fixed}, got {self.num_parties}",
            )
        else:
            require(
                len(self.scheme) == self.num_parties,
                f"vfl_split.scheme lists {len(self.scheme)} parties, vfl_split.num_parties={self.num_parties}",
            )
        require(
            self.num_feature_parties >= 1,
            f"vfl_split.num_parties={self.num_parties} leaves no feature party "
            f"(label_party_features={self.label_party_features})",
        )

    @property
    def num_feature_parties(self) -> int:
        """Passive parties: every feature-holding party except the label party when it holds features."""
        return self.num_parties - 1 if self.label_party_features else self.num_parties


@dataclass
class ModelConfig:
    """Bottom and top models (group ``vfl_model``).

    Attributes
    ----------
    top : str (default: "sum")
        A registered top model (:func:`fl_kd.vfl.models.available_top_models`): ``sum`` adds every party's logits
        (not trainable; the gradient a feature party receives is then ``(softmax - target) / B``, the setting of
        direct label inference); ``mlp`` is a trainable head over the concatenated embeddings.
    embedding_dim : int | None (default: None)
        Bottom-model output size; None: the number of classes for a ``sum`` top, 16 otherwise.
    bottom_hidden : list[int] (default: [64])
        Hidden widths of every bottom MLP.
    top_hidden : list[int] (default: [])
        Hidden widths of a trainable top (``mlp``; refused for ``sum``, which has none).
    """

    top: str = "sum"
    embedding_dim: int | None = None
    bottom_hidden: list[int] = field(default_factory=lambda: [64])
    top_hidden: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("vfl_model.top", self.top, available_top_models())
        if self.embedding_dim is not None:
            check_range("vfl_model.embedding_dim", self.embedding_dim, low=1)
        for key in ("bottom_hidden", "top_hidden"):
            for index, width in enumerate(getattr(self, key)):
                check_range(f"vfl_model.{key}[{index}]", width, low=1)
        require(  # the sum top has no layers: widths given for it would be dropped
            not self.top_hidden or self.top == "mlp",
            f"vfl_model.top_hidden={self.top_hidden} is read only by vfl_model.top=mlp, got {self.top}",
        )

    def embedding_size(self, num_classes: int) -> int:
        """Bottom-model output size for ``num_classes`` classes (see ``embedding_dim``)."""
        if self.embedding_dim is not None:
            return self.embedding_dim
        return num_classes if self.top == "sum" else 16


@dataclass
class DefenceConfig:
    """The label party's defence (group ``defence``).

    Attributes
    ----------
    name : str (default: "none")
        A registered defence (:func:`fl_kd.vfl.defences.available_defences`); ``none`` is vanilla split training.
    params : dict[str, Any] (default: {})
        Keyword arguments of the defence class; see :func:`default_params` for their defaults.
    """

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("defence.name", self.name, available_defences())
        self.params = check_params("defence.params", defence_class(self.name), self.params)
        if isinstance(self.params.get("path"), str):  # an autoencoder's file, read in the run folder under Flower
            self.params["path"] = absolute_path(self.params["path"])
        try:
            build_defence(self.name, **self.params)
        except ValueError as err:
            raise ConfigError(f"defence.params: {err}") from err

    @classmethod
    def defaults(cls, name: str) -> DefenceConfig:
        """Defence ``name`` with every parameter at its default."""
        return cls(name, default_params(defence_class(name)))


#: Default bound on the L2 norm of one sample's embedding or gradient in a VFL message.
DEFAULT_MAX_NORM = 1e4


PARTY_STATES = ("context", "node")
"""Where a ClientApp keeps its party between messages (``training.party_state``)."""


@dataclass
class TrainingConfig:
    """Split training and the message exchange (no group file: set keys as ``training.<key>``).

    Attributes
    ----------
    epochs : int (default: 5)
        Passes over the aligned training samples.
    batch_size : int (default: 64)
        Samples per mini-batch (the last batch of an epoch may be smaller).
    lr : float (default: 0.01)
        Learning rate of every party.
    optimizer : str (default: "adam")
        A registered optimiser (:func:`fl_kd.vfl.parties.available_optimizers`) for every party.
    batches_per_message : int (default: 1)
        Mini-batches per round of messages (two exchanges over Flower): 1 is exact split training; more cuts round
        trips with embeddings that are a few local steps stale (FedBCD-style). The in-process backend follows the same
        schedule. Kept at 1: on Fashion-MNIST halves (defaults, in-process, seeds 0-4) the mean MP was 0.811 at 1,
        0.799 at 2 (within 0.5 point on four seeds, -6.3 points on seed 1), 0.791 at 4 and 0.733 at 8, so no larger
        value stays within 0.5 point (BENCHMARKS.md, "Speed").
    max_train_samples : int | None (default: 5000)
        Seeded cap on the training samples, so large sets (Fashion-MNIST) run in minutes on a CPU; None keeps
        every sample. breast_cancer (455 training samples) and credit (3,563) lie below it.
    max_test_samples : int | None (default: 2000)
        The same for the test samples.
    evaluate_every : int (default: 0)
        Also evaluate MP every this many epochs (0: only after training).
    timeout : float (default: 600.0)
        Seconds to wait for one exchange of messages before a party counts as missing (its batch is skipped); a
        party missing from 3 exchanges in a row stops the run (over Flower), since every batch needs every party.
    max_norm : float (default: 1e4)
        Largest L2 norm of one sample's embedding or gradient in a message; a batch whose embedding exceeds it is
        skipped and a gradient that exceeds it is refused (both counted), as for NaN or inf.
    party_state : str (default: "node")
        Where a ClientApp keeps its party (models, optimiser, defence state) between messages over Flower:
        ``"context"``, in ``context.state``, which Flower's simulation carries to the ClientApp and back with every
        message (about 8 ms per exchange per MB); or ``"node"``, in a file on the node (the system's temporary
        folder), ``context.state`` holding only its token. Either way the state never leaves the node and a party
        rebuilt from it trains bit for bit as before. The in-process backend keeps its parties in memory.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "adam"
    batches_per_message: int = 1
    max_train_samples: int | None = 5000
    max_test_samples: int | None = 2000
    evaluate_every: int = 0
    timeout: float = 600.0
    max_norm: float = DEFAULT_MAX_NORM
    party_state: str = "node"

    def __post_init__(self) -> None:
        check_choice("training.party_state", self.party_state, PARTY_STATES)
        for key in ("epochs", "batch_size", "batches_per_message"):
            check_range(f"training.{key}", getattr(self, key), low=1)
        check_range("training.lr", self.lr, low=0, low_open=True)
        check_choice("training.optimizer", self.optimizer, available_optimizers())
        for key in ("max_train_samples", "max_test_samples"):
            if getattr(self, key) is not None:
                check_range(f"training.{key}", getattr(self, key), low=1)
        check_range("training.evaluate_every", self.evaluate_every, low=0)
        check_range("training.timeout", self.timeout, low=0, low_open=True)
        check_range("training.max_norm", self.max_norm, low=0, low_open=True)


@dataclass
class ScoringConfig:
    """VFLAIR's defence capability score (DCS), which needs MP*: the main-task accuracy of vanilla VFL.

    Attributes
    ----------
    mp_star : float | None (default: None)
        Given MP*; when None, a run without defence is its own MP*, and otherwise DCS is left out unless
        ``baseline``.
    baseline : bool (default: False)
        Run vanilla VFL (in-process, same seed and settings) first to obtain MP*.
    beta : float (default: 0.5)
        Weight of the utility term of DCS (``1 - beta`` weights the privacy term).
    """

    mp_star: float | None = None
    baseline: bool = False
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.mp_star is not None:
            check_range("scoring.mp_star", self.mp_star, low=0, high=1)
        check_range("scoring.beta", self.beta, low=0, high=1)
        require(
            self.mp_star is None or not self.baseline,
            "scoring.baseline=true runs vanilla VFL for MP*, which scoring.mp_star gives: set one of them",
        )


@dataclass
class VFLRunConfig:
    """One vertical-FL run: split training with a label defence, attacked by one feature party.

    Attributes
    ----------
    seed : int (default: 0)
        Seeds models, shuffling, subsampling and the defence; at most ``fl_kd.config.MAX_SEED`` (2**32 - 1).
    attacker_party : int (default: 0)
        Feature party (0-based) that runs the attacks on the gradients it receives.
    dataset : DatasetConfig (default: breast_cancer)
        The samples the parties split by columns.
    vfl_split : SplitConfig
        Which columns each party holds.
    vfl_model : ModelConfig
        Bottom and top models.
    defence : DefenceConfig (default: none)
        The label party's defence.
    attack : dict[str, dict[str, Any]] (default: direct_label_inference and passive_model_completion)
        Attack name -> keyword arguments of the attack class (:func:`fl_kd.vfl.attacks.available_attacks`);
        the order is the order of the results.
    training : TrainingConfig
        Split training and the message exchange.
    scoring : ScoringConfig
        How the defence is scored (DCS).
    simulation : SimulationConfig
        How the run executes: a Flower simulation or the in-process loop.
    """

    seed: int = 0
    attacker_party: int = 0
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(name="breast_cancer"))
    vfl_split: SplitConfig = field(default_factory=SplitConfig)
    vfl_model: ModelConfig = field(default_factory=ModelConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    attack: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {name: default_params(attack_class(name)) for name in DEFAULT_ATTACKS}
    )
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def __post_init__(self) -> None:
        check_range("seed", self.seed, low=0, high=MAX_SEED)
        feature_parties = self.num_feature_parties
        require(
            0 <= self.attacker_party < feature_parties,
            f"attacker_party must be in [0, {feature_parties}) (the feature parties), got {self.attacker_party}",
        )
        require(not self.dataset.download, "dataset.download=true: fl-kd-vfl reads local data only")
        per_message = self.training.batches_per_message * (feature_parties + 1)  # the label party's request
        require(
            per_message <= MAX_RECORD_ARRAYS,
            f"training.batches_per_message={self.training.batches_per_message} with {feature_parties} feature "
            f"party(ies) puts {per_message} arrays in one message, more than the protocol's {MAX_RECORD_ARRAYS}",
        )
        scoring = self.scoring
        require(  # DCS, which beta weighs, needs MP*: given, this run's own without defence, or a baseline run's
            scoring.beta == 0.5 or scoring.mp_star is not None or scoring.baseline or self.defence.name == "none",
            f"scoring.beta={scoring.beta} weighs DCS, which needs MP*: set scoring.mp_star or scoring.baseline=true",
        )
        require(
            not defence_class(self.defence.name).sum_top_only or self.vfl_model.top == "sum",
            f"defence={self.defence.name} needs each feature party's embedding to be its logits: vfl_model.top=sum, "
            f"got vfl_model.top={self.vfl_model.top}",
        )
        checked = {}
        for name, params in self.attack.items():
            check_choice("attack", name, available_attacks())
            require(
                not attack_class(name).sum_top_only or self.vfl_model.top == "sum",
                f"attack {name} reads the gradient of each class's logit, which only vfl_model.top=sum sends, got "
                f"vfl_model.top={self.vfl_model.top}: pick other attacks, e.g. attack=[passive_model_completion]",
            )
            checked[name] = check_params(f"attack.{name}", attack_class(name), params)
            try:
                build_attack(name, **checked[name])
            except ValueError as err:
                raise ConfigError(f"attack.{name}: {err}") from err
        self.attack = checked

    def binary_only(self) -> list[str]:
        """The defence and attacks of this run that work on two-class tasks only, named for a message."""
        parts = [f"defence {self.defence.name}"] if defence_class(self.defence.name).binary_only else []
        return parts + [f"attack {name}" for name in self.attack if attack_class(name).binary_only]

    def check_num_classes(self, num_classes: int) -> None:
        """Refuse, before any training, a two-class defence or attack on a task of ``num_classes`` classes.

        The class count comes with the data, so this cannot be checked when the config is read; unchecked, such a
        run trained in full and only then found that its attack or defence had nothing to say.
        """
        size = self.vfl_model.embedding_size(num_classes)
        require(
            self.vfl_model.top != "sum" or size == num_classes,
            f"vfl_model.top=sum adds the parties' logits: vfl_model.embedding_dim={size} must be the {num_classes} "
            f"classes of dataset={self.dataset.name} (leave it unset to take them)",
        )
        parts = self.binary_only()
        if num_classes != 2 and parts:
            raise ConfigError(
                f"dataset={self.dataset.name} has {num_classes} classes, but {' and '.join(parts)} "
                "works on two-class tasks only"
            )
        for name, params in self.attack.items():
            told = params.get("num_classes")
            require(
                told is None or told == num_classes,
                f"attack.{name}.num_classes={told}, but dataset={self.dataset.name} has {num_classes} classes "
                "(leave it unset to take the dataset's)",
            )

    def check_num_train(self, num_train: int) -> None:
        """Refuse, before any training, an attacker told more training labels than leave a sample to attack (it
        was cut to all of them, and its figures came out as NaN after the whole training)."""
        for name, params in self.attack.items():
            for key in ("num_known", "known_labels"):  # model completion and DS; the adaptive pair (ALI, GC)
                known = params.get(key)
                require(
                    known is None or known < num_train,
                    f"attack.{name}.{key}={known} leaves none of the {num_train} training samples to attack",
                )

    @property
    def num_feature_parties(self) -> int:
        """Passive parties in the run (a federation has one more node: the label party)."""
        return self.vfl_split.num_feature_parties


__all__ = [
    "DEFAULT_ATTACKS",
    "DefenceConfig",
    "ModelConfig",
    "ScoringConfig",
    "SplitConfig",
    "TrainingConfig",
    "VFLRunConfig",
    "check_params",
    "default_params",
]
