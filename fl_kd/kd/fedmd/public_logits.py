"""What the logit-sharing peers (FedMD, DS-FL) share: logits on public positions up, soft targets down.

Per round the server names the public positions in play (labelled part first, then the unlabelled part; see
:attr:`~fl_kd.kd.federation.Federation.public_x`); each sampled client answers its logits there; the server screens
the answers, turns the accepted ones into soft targets (FedMD's consensus, DS-FL's entropy-reduced average: the one
place where the two differ, :meth:`PublicLogitsServer.soft_targets`), distils them into its own model and sends them
back for the clients to distil. The soft targets travel as logits (DS-FL's as log-probabilities), so every party
takes them in through the same pure-KD loop, :meth:`~fl_kd.kd.client.DistillClient.distill_on`; no label is read.

The server model is fl-kd's addition for comparison (neither paper has one): the device profile's large
``server_model``, distilled each round from the same soft targets the clients get.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.config import check_choice, check_range, require, require_defaults_unless
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import SGDStrategyConfig
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.consensus_config import ConsensusConfig
from fl_kd.kd.federation import build_server_model
from fl_kd.kd.fusion import LOGIT_AGGREGATIONS
from fl_kd.kd.robust import AggregationConfig, RobustSettings
from fl_kd.kd.roles import Answer, Arrays, DistillClientRole, Instruction, Phase, ServerRole
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.kd.training import LOGITS_DTYPES, from_wire, to_wire, wire_dtype
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE, check_client_answer

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig
    from fl_kd.kd.federation import Federation

Figures = dict[str, float | int]
C = TypeVar("C", bound="PublicLogitsConfig")
log = logging.getLogger(__name__)


@dataclass
class PublicLogitsConfig(ConsensusConfig, AggregationConfig, SGDStrategyConfig):
    """Settings every logit-sharing peer has (FedMD, DS-FL add their own).

    Attributes
    ----------
    name, rounds, fraction_fit
        See :class:`~fl_kd.kd.algorithm.StrategyConfig`.
    server_epochs, server_batch_size, server_lr : (default: 2, 64, 0.05)
        Distillation of the soft targets into the server model (fl-kd's addition): epochs over the round's public
        positions, mini-batch size, SGD learning rate.
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings of all parties (local epochs, batch size and learning rate of clients come from their tier).
    logits_dtype : str (default: "float32")
        Wire format of logits and soft targets in both directions ("float32", "float16", or "uint8" and "uint5":
        8- and 5-bit log-probabilities, so the consensus averages log-probabilities rather than logits).
    aggregation : str (default: "mean")
        How the clients' answers are fused (:data:`fl_kd.kd.fusion.LOGIT_AGGREGATIONS`): "mean" is the algorithm's
        own; "median", "trimmed_mean", "krum", "multi_krum" are robust to outlying clients; "trust" weights each
        client per class by its precision on the round's labelled public samples (it reads their labels).
    trim_fraction, num_malicious, num_selected, trust_power : (default: 0.2, 0, 0, 4.0)
        Parameters of those rules (:class:`fl_kd.kd.robust.RobustSettings`).
    consensus_z, consensus_margin, consensus_confidence, consensus_burst_z, consensus_raise, consensus_raise_margin
        The label-free consensus screen (:class:`~fl_kd.kd.consensus_config.ConsensusConfig`; the two switches default
        to False, the burst test to 0.0), whose reference is the
        labelled public part: a client that agrees with the others less on the unlabelled positions than there is
        left out of the round's fusion, before ``aggregation``. It reads which positions are labelled, never a
        label; it needs both parts of the transfer set.
    """

    server_epochs: int = 2
    server_batch_size: int = 64
    server_lr: float = 0.05
    logits_dtype: str = "float32"
    trust_power: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.server_epochs", self.server_epochs, low=0)
        check_range("strategy.server_batch_size", self.server_batch_size, low=1)
        check_range("strategy.server_lr", self.server_lr, low=0.0, low_open=True)
        keys = ("server_batch_size", "server_lr")
        require_defaults_unless(self, keys, self.server_epochs > 0, "is not read with strategy.server_epochs=0")
        check_choice("strategy.logits_dtype", self.logits_dtype, LOGITS_DTYPES)
        self.check_aggregation(LOGIT_AGGREGATIONS.names())
        check_range("strategy.trust_power", self.trust_power, low=0.0)
        why = f"is used only with strategy.aggregation=trust, got {self.aggregation}"
        require_defaults_unless(self, ("trust_power",), self.aggregation == "trust", why)
        self.check_consensus("strategy.")

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """The consensus screen compares the labelled part with the unlabelled part: it needs both."""
        transfer = experiment.transfer
        require(
            self.consensus_z == 0 or (transfer.labelled > 0 and transfer.unlabelled > 0),
            "strategy.consensus_z compares agreement on the labelled and the unlabelled transfer samples: it needs "
            f"transfer.labelled > 0 and transfer.unlabelled > 0 (got {transfer.labelled} and {transfer.unlabelled})",
        )

    def robust_settings(self) -> RobustSettings:
        """The parameters of ``aggregation``, with the logit-only ``trust`` rule's sharpness."""
        return replace(super().robust_settings(), trust_power=self.trust_power)


def build_server_learner(cfg: ExperimentConfig, federation: Federation, strategy: PublicLogitsConfig) -> DistillClient:
    """The server model, freshly seeded, as a :class:`DistillClient` of id ``SERVER_ID`` on the public inputs.

    It reuses the clients' KD loop (``distill_on``) and nothing else: the server has no private data, and
    :class:`DistillClient` insists on some, so its private slot holds the public inputs under placeholder labels
    that no call ever trains on (only ``distill_on``, ``evaluate`` and ``state_dict`` are used).
    """
    model = build_server_model(cfg, federation)
    public_x = federation.public_x
    no_labels = torch.zeros(0, dtype=torch.long)
    settings = ClientTrainConfig(
        local_epochs=0,
        batch_size=strategy.server_batch_size,
        lr=strategy.server_lr,
        momentum=strategy.momentum,
        weight_decay=strategy.weight_decay,
        distill_epochs=strategy.server_epochs,
    )
    placeholder = torch.zeros(public_x.shape[0], dtype=torch.long)
    return DistillClient(
        SERVER_ID, model, public_x, placeholder, public_x[:0], no_labels, settings, cfg.seed, cfg.device, public_x
    )


def round_positions(num_public: int, per_round: int | None, seed: int, round: int) -> NDArray[np.int64]:
    """Sorted public positions ``(n,)`` in play in ``round``: all, or a sample of ``per_round`` seeded by the round."""
    if per_round is None or per_round >= num_public:
        return np.arange(num_public, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, SERVER_ID, round, "public_sample"))
    return np.sort(rng.choice(num_public, size=per_round, replace=False)).astype(np.int64)


class PublicLogitsServer(ServerRole):
    """Server half: ask for logits on the round's public positions, make soft targets, distil, send them back.

    Parameters
    ----------
    server_model : DistillClient
        The server model (see :func:`build_server_learner`).
    strategy : PublicLogitsConfig
        The run's settings.
    seed : int
        Base seed of the run (seeds the sample of public positions).
    per_round : int | None (default: None)
        Public positions per round (a seeded sample); all of them when None.
    temperature : float (default: 1.0)
        KD temperature of the server's distillation.
    max_abs_value : float (default: 1e4)
        Bound on every float logit of an answer (``ExperimentConfig.max_abs_value``).
    """

    def __init__(
        self,
        server_model: DistillClient,
        strategy: PublicLogitsConfig,
        seed: int,
        per_round: int | None = None,
        temperature: float = 1.0,
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        self.server_model = server_model
        self.num_classes = server_model.num_classes
        self.num_public = int(server_model.public_x.shape[0])
        self.strategy = strategy
        self.seed = seed
        self.per_round = per_round
        self.temperature = temperature
        self.max_abs_value = float(max_abs_value)
        self.logits_dtype = strategy.logits_dtype
        self._round, self._positions = -1, np.zeros(0, dtype=np.int64)
        self._sent_positions = np.zeros(0, dtype=np.int64)
        self._targets: NDArray[Any] = np.zeros((0, self.num_classes), dtype=wire_dtype(self.logits_dtype))
        #: Labels of the labelled public part, for the "trust" aggregation (set by the builder; None: unknown).
        self.public_labels: NDArray[np.int64] | None = None
        self._answered: list[int] = []
        self._shares: NDArray[np.float64] = np.zeros(0)
        self.screen = strategy.consensus_screen(self.num_classes)
        self._screened: frozenset[int] = frozenset()

    def fuse(self, values: NDArray[np.float64]) -> NDArray[np.float64] | None:
        """``strategy.aggregation`` of ``(K, n, C)`` values on the round's positions, or None for "mean".

        None leaves the algorithm's own averaging (bit for bit as before); either way the clients' shares of the
        fusion weight are kept for :meth:`fusion_weights`.
        """
        num_clients = values.shape[0]
        if self.strategy.aggregation == "mean":
            self._shares = np.full(num_clients, 1.0 / num_clients)
            return None
        positions = self._positions
        labels = np.full(positions.shape, -1, dtype=np.int64)
        if self.public_labels is not None:
            known = positions < self.public_labels.size
            labels[known] = self.public_labels[positions[known]]
        rule = LOGIT_AGGREGATIONS.get(self.strategy.aggregation)
        fused = rule(values, labels, self.strategy.robust_settings())
        self._shares = fused.client_weights
        return fused.logits

    def fusion_weights(self) -> dict[int, float]:
        """Client id -> its share of the last round's fusion weight (0 for a client the screen left out)."""
        shares = {cid: 0.0 for cid in self._screened}
        shares.update((cid, float(share)) for cid, share in zip(self._answered, self._shares, strict=True))
        return dict(sorted(shares.items()))

    def screened_clients(self) -> frozenset[int] | None:
        """The clients the consensus screen left out of the last round's fusion; None without a screen."""
        return self._screened if self.screen is not None else None

    def _screen(self, answered: list[int], logits: NDArray[np.float64]) -> tuple[NDArray[np.bool_], Figures]:
        """Which of the ``answered`` clients' logits ``(K, n, C)`` on the round's positions the consensus screen
        keeps, and its figures (every answer kept, and no figure, without a screen).

        The reference is the labelled public part (positions below its size): only which positions are labelled is
        read, never a label.
        """
        keep = np.ones(len(answered), dtype=bool)
        self._screened = frozenset()
        if self.screen is None:
            return keep, {}
        positions = self._positions
        labelled = positions < (0 if self.public_labels is None else self.public_labels.size)
        if labelled.all():  # nothing unchecked this round: nothing to screen for
            return keep, {"consensus_screened": 0, "consensus_z_max": 0.0}
        parts = {
            part: {cid: (positions[where], logits[k, where]) for k, cid in enumerate(answered)}
            for part, where in (("reference", labelled), ("unlabelled", ~labelled))
        }
        screened, scores = self.screen.screen(parts["unlabelled"], parts["reference"])
        keep = np.array([cid not in screened for cid in answered])
        if not keep.any():  # the screen's median rule leaves a majority in; kept as a guard, never seen
            log.warning("round %d: the consensus screen left out every client; none is left out", self._round)
            keep[:] = True
            screened = set()
        self._screened = frozenset(screened)
        return keep, {"consensus_screened": len(screened), "consensus_z_max": max(scores.values(), default=0.0)}

    @abstractmethod
    def soft_targets(self, logits: NDArray[np.float64]) -> tuple[NDArray[np.float64], Figures]:
        """The algorithm's aggregation: client logits ``(K, n, C)`` (sorted by client id) -> targets ``(n, C)``.

        Returns the targets as logits (``softmax(targets)`` is the soft label) and the round's figures.
        """

    def no_answer_figures(self) -> Figures:
        """Figures of a round without an accepted answer (the same keys as :meth:`soft_targets` gives)."""
        return {}

    def positions(self, round: int) -> NDArray[np.int64]:
        """Public positions in play in ``round`` (drawn once per round)."""
        if round != self._round:
            self._round, self._positions = round, round_positions(self.num_public, self.per_round, self.seed, round)
        return self._positions

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """The round's public positions and the logits' wire dtype."""
        return Instruction({kd.POSITIONS: self.positions(round)}, {kd.LOGITS_DTYPE: self.logits_dtype})

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """Positions and logits."""
        return frozenset({kd.POSITIONS, kd.LOGITS})

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Exactly ``positions`` (as asked) and ``logits`` ``(n, C)`` of a wire dtype, floats finite."""
        if set(arrays) != {kd.POSITIONS, kd.LOGITS}:
            return f"arrays {sorted(arrays)} are not [{kd.LOGITS!r}, {kd.POSITIONS!r}]"
        return check_client_answer(
            self.positions(round),
            arrays[kd.POSITIONS],
            arrays[kd.LOGITS],
            self.num_classes,
            self.max_abs_value,
            wire=self.logits_dtype,
        )

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> Figures:
        """Soft targets from the accepted answers, distilled into the server model; they are then sent back."""
        positions = self.positions(round)
        figures: Figures = {"num_answers": len(answers), "num_positions": int(positions.size)}
        if not answers:
            self._sent_positions = np.zeros(0, dtype=np.int64)
            self._targets = np.zeros((0, self.num_classes), dtype=wire_dtype(self.logits_dtype))
            self._answered, self._shares, self._screened = [], np.zeros(0), frozenset()
            return figures | self.no_answer_figures() | {"server_loss": 0.0}
        # A fixed client order keeps floating-point sums the same in every runtime.
        answered = sorted(answers)
        stacked = np.stack(
            [from_wire(answers[cid][kd.LOGITS], self.num_classes).astype(np.float64) for cid in answered]
        )
        keep, screened = self._screen(answered, stacked)
        figures |= screened
        self._answered = [cid for cid, kept in zip(answered, keep, strict=True) if kept]
        targets, own = self.soft_targets(stacked[keep])
        self._sent_positions, self._targets = positions, to_wire(torch.from_numpy(targets), self.logits_dtype)
        # The server learns from exactly what the clients get (after the wire's rounding).
        result = self.server_model.distill_on(
            round, "server_distill", positions, self._targets, self.strategy.server_epochs, self.temperature
        )
        return figures | own | {"server_loss": float(result["loss"])}

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """The soft targets (as logits) and the public positions they belong to."""
        return Instruction({kd.POSITIONS: self._sent_positions, kd.SERVER_LOGITS: self._targets})

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The server model's accuracy."""
        return self.server_model.evaluate(x, y)

    def state_dict(self) -> dict[str, Tensor]:
        """The server model's weights (CPU tensors)."""
        return dict(self.server_model.state_dict()["model"])

    def save(self, path: str | Path) -> None:
        """The server model's ``state_dict`` (``torch.load(weights_only=True)`` reads it)."""
        torch.save(self.state_dict(), Path(path))


class PublicLogitsClient(DistillClientRole):
    """Client half: answer logits on the asked public positions; distil soft targets sent back."""

    def answer(self, query: tuple[NDArray[np.int64], str], trained: Mapping[str, float]) -> Answer:
        """Logits on the public positions of ``query`` (from :meth:`checked_query`, before training), with the
        figures of the training that came before."""
        positions, dtype = query
        logits = self.client.public_logits(positions, dtype)
        return Answer(
            {kd.POSITIONS: positions, kd.LOGITS: logits},
            {
                kd.TRAIN_LOSS: float(trained.get("loss", 0.0)),
                kd.NUM_EXAMPLES: float(self.client.num_examples),
                kd.TRAIN_SAMPLES: float(trained.get("train_samples", 0.0)),
            },
        )

    def instruction_names(self, phase: Phase) -> frozenset[str]:
        """The asked public positions to train; the positions and their soft targets to take in."""
        return frozenset({kd.POSITIONS} if phase == "train" else {kd.POSITIONS, kd.SERVER_LOGITS})

    def distil(
        self, round: int, instruction: Instruction, phase: str, epochs: int, temperature: float
    ) -> dict[str, float]:
        """``epochs`` of pure KD towards the sent soft targets: the last epoch's ``loss``, and ``train_samples``."""
        positions = instruction.arrays.get(kd.POSITIONS)
        targets = instruction.arrays.get(kd.SERVER_LOGITS)
        if positions is None or targets is None:
            raise ValueError(f"asked to distil but the message lacks {kd.POSITIONS} or {kd.SERVER_LOGITS}")
        return self.client.distill_on(round, phase, positions, targets, epochs, temperature)
