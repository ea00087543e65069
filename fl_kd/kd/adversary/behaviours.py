"""What a malicious client does to the honest client's data or answer, one registered class per behaviour.

Logit attacks rewrite the logits an answer carries (``logits``, and ``unlabelled-logits`` where a strategy asks for
them), keeping their positions, shape and wire dtype so the answer still passes the protocol checks: the server
must tell it apart by its content alone. Weight attacks rewrite the update ``w_local - w_global`` of a
weight-sharing answer. Data attacks (``label_flip``, ``targeted``) relabel the private set once, when the client is
built, and train honestly on the lie. Attacks follow Fang et al. (USENIX Security 2020) and Blanchard et al.
(NeurIPS 2017) for weights, and the logit attacks studied for FedMD/DS-FL/FedGEMS-style distillation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.adversary.config import BEHAVIOUR_SETTINGS, AdversaryConfig
from fl_kd.kd.roles import Answer, Arrays, Instruction
from fl_kd.kd.training import from_wire, to_wire
from fl_kd.registry import Registry

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

#: (logits name, positions name) pairs an answer may carry.
LOGIT_ARRAYS: tuple[tuple[str, str], ...] = ((kd.LOGITS, kd.POSITIONS), (kd.UNLABELLED_LOGITS, kd.UNLABELLED_POSITIONS))

#: Normalisation statistics, not learnt weights: an attack leaves them alone (a negative variance is no attack).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

#: The key colluding clients share (``adversary.coordinated``): agreed among themselves, unknown to the server.
_COLLUSION_KEY = 0xC0_11_0DE
#: A second key of theirs, for the wrong class they name where the first choice is their own class.
_SECOND_CHOICE_KEY = _COLLUSION_KEY + 1


class Behaviour:
    """The honest client's behaviour (``none``); subclasses override what they corrupt.

    Attributes
    ----------
    kind : str
        What it corrupts: "logits", "weights" or "any" (checked against ``StrategyConfig.shares``).
    trains : bool
        Whether the client trains locally before answering (a free rider does not).
    settings : frozenset[str]
        The ``adversary`` settings it reads, beside ``name`` and ``fraction`` (:meth:`unread`).
    """

    kind: ClassVar[str] = "any"
    trains: ClassVar[bool] = True
    settings: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def unread(cls, config: AdversaryConfig, experiment: ExperimentConfig) -> dict[str, str]:
        """The settings of :data:`BEHAVIOUR_SETTINGS` it would not read in ``experiment``, each with why: changed from
        their default, they are refused (``AdversaryConfig.check_experiment``)."""
        return {
            key: f"adversary {config.name} does not read it" for key in BEHAVIOUR_SETTINGS if key not in cls.settings
        }

    def __init__(self, config: AdversaryConfig, num_classes: int, transfer_y: Tensor) -> None:
        config.check_classes(num_classes)
        self.config = config
        self.num_classes = num_classes
        self.transfer_y = transfer_y.numpy().astype(np.int64)

    def poison_labels(self, labels: Tensor) -> Tensor:
        """The private labels the client trains on (``(n,)`` int64)."""
        return labels

    def corrupt(self, answer: Answer, instruction: Instruction, rng: np.random.Generator) -> Answer:
        """The answer the server gets instead of the honest ``answer`` (to ``instruction``)."""
        arrays = dict(answer.arrays)
        for logits_name, positions_name in LOGIT_ARRAYS:
            if logits_name in arrays and _overrides(type(self), "corrupt_logits"):
                logits = arrays[logits_name]
                # An answer that does not repeat its positions answers the query, in its order.
                asked = arrays.get(positions_name, instruction.arrays.get(positions_name))
                positions = np.asarray(asked if asked is not None else np.zeros(0, dtype=np.int64))
                decoded = from_wire(logits, self.num_classes).astype(np.float64)
                arrays[logits_name] = rewired(logits, self.corrupt_logits(decoded, positions, rng))
        if kd.LOGITS not in arrays and _overrides(type(self), "corrupt_update"):
            arrays = self._corrupt_weights(arrays, instruction, rng)
        return Answer(arrays, dict(answer.metrics))

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Logits ``(n, C)`` the client sends for public ``positions`` ``(n,)``."""
        return logits

    def corrupt_update(self, update: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """The update ``w_local - w_global`` of one weight array that the client sends instead."""
        return update

    def _corrupt_weights(self, arrays: Arrays, instruction: Instruction, rng: np.random.Generator) -> Arrays:
        out = dict(arrays)
        for name in sorted(arrays):
            value, reference = arrays[name], instruction.arrays.get(name)
            if (
                value.dtype != np.float32
                or reference is None
                or reference.shape != value.shape
                or name.endswith(_BUFFER_SUFFIXES)
            ):
                continue
            base = reference.astype(np.float64)
            out[name] = (base + self.corrupt_update(value.astype(np.float64) - base, rng)).astype(np.float32)
        return out

    def wrong_classes(
        self, classes: NDArray[np.int64], rng: np.random.Generator, positions: NDArray[Any] | None = None
    ) -> NDArray[np.int64]:
        """Per row, a class drawn uniformly among those other than ``classes``.

        With ``adversary.coordinated`` (and ``positions``) the draw is the colluders' shared one for each position,
        so clients that agree on ``classes`` there name the same wrong class.
        """
        if self.config.coordinated and positions is not None:
            # A shared first choice, and a shared second one for the clients whose own class the first is: every
            # colluder that agrees on ``classes`` names the same class, and each other class has chance 1 / (C - 1)
            # (1/C as first choice, 1/C * 1/(C-1) as second), where "first choice + 1" gave the next class 2/C.
            first = (shared_uniforms(positions)[:, 1] * self.num_classes).astype(np.int64)
            second = (shared_uniforms(positions, _SECOND_CHOICE_KEY)[:, 0] * (self.num_classes - 1)).astype(np.int64)
            return np.where(first == classes, (first + 1 + second) % self.num_classes, first)
        offset = 1 + rng.integers(0, self.num_classes - 1, size=classes.shape[0])
        return (classes + offset) % self.num_classes

    def poisoned(self, positions: NDArray[Any], rng: np.random.Generator) -> NDArray[np.bool_]:
        """Per row, whether it is among the ``adversary.poison_share`` of rows lied on (shared when coordinated)."""
        draw = shared_uniforms(positions)[:, 0] if self.config.coordinated else rng.random(positions.shape[0])
        return np.asarray(draw < self.config.poison_share)

    def least_sure(self, logits: NDArray[np.float64], rows: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Per row, whether it is among the ``adversary.poison_share`` of ``rows`` whose top logit leads the runner-up
        by the least (the client's own least sure answers)."""
        top_two = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.zeros((logits.shape[0], 2))
        margin = np.where(rows, top_two[:, 1] - top_two[:, 0], np.inf)
        count = int(round(self.config.poison_share * int(rows.sum())))
        chosen = np.zeros(logits.shape[0], dtype=bool)
        chosen[np.argsort(margin, kind="stable")[:count]] = True
        return chosen

    def labels_or_predictions(self, logits: NDArray[np.float64], positions: NDArray[Any]) -> NDArray[np.int64]:
        """Per row, the true class where the client knows it (labelled transfer part), else its own prediction."""
        known = positions < self.transfer_y.size
        labels: NDArray[np.int64] = logits.argmax(axis=1).astype(np.int64)
        labels[known] = self.transfer_y[positions[known]]
        return labels


def rewired(sent: NDArray[Any], logits: NDArray[np.float64]) -> NDArray[Any]:
    """``logits`` ``(n, C)`` in the wire format of the array ``sent`` they replace, so the answer keeps its dtype."""
    if sent.dtype == np.uint8:
        return to_wire(torch.from_numpy(logits), "uint5" if sent.ndim == 1 else sent.dtype)
    return logits.astype(sent.dtype)


def shared_uniforms(positions: NDArray[Any], key: int = _COLLUSION_KEY) -> NDArray[np.float64]:
    """Two uniform numbers per transfer position ``(n, 2)``, the same for every colluding client and every round
    (another ``key``: another pair)."""
    index = np.asarray(positions, dtype=np.int64).reshape(-1)
    size = int(index.max()) + 1 if index.size else 0
    # A generator's first k draws do not depend on how many follow, so every table agrees on the rows they share.
    table = np.random.default_rng(key).random((size, 2))
    return table[index]


def _overrides(cls: type[Behaviour], method: str) -> bool:
    # An honest step is skipped rather than recomputed, so what it does not attack leaves the answer's bytes alone.
    return getattr(cls, method) is not getattr(Behaviour, method)


ADVERSARIES: Registry[type[Behaviour]] = Registry("adversary")
ADVERSARIES.add("none", Behaviour)


def random_like(logits: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    """Gaussian logits with the answer's own mean and standard deviation (no information, plausible scale)."""
    if logits.size == 0:
        return logits
    return rng.normal(float(logits.mean()), float(logits.std()) or 1.0, size=logits.shape)


@ADVERSARIES.register("label_flip")
class LabelFlip(Behaviour):
    """Trains on flipped private labels ``y -> C - 1 - y`` and answers honestly from that model."""

    def poison_labels(self, labels: Tensor) -> Tensor:
        """Every label flipped."""
        return self.num_classes - 1 - labels


@ADVERSARIES.register("random_logits")
class RandomLogits(Behaviour):
    """Trains, then answers Gaussian noise shaped and scaled like its real logits."""

    kind = "logits"

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Noise instead of the logits."""
        return random_like(logits, rng)


@ADVERSARIES.register("negated_logits")
class NegatedLogits(Behaviour):
    """Answers ``-logits``: its most likely class becomes its least likely."""

    kind = "logits"

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """The negated logits."""
        return -logits


@ADVERSARIES.register("scaled_logits")
class ScaledLogits(Behaviour):
    """Answers ``lambda * logits`` (``adversary.scale``): the right classes, with outsized weight in a mean."""

    kind = "logits"
    settings = frozenset({"scale"})

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """The scaled logits."""
        return self.config.scale * logits


@ADVERSARIES.register("confident_wrong")
class ConfidentWrong(Behaviour):
    """Answers a one-hot logit (``adversary.confidence``) on a wrong class: right where it knows the label, wrong.

    The wrong class is drawn per row among the classes other than the true one (labelled transfer part) or than its
    own prediction (elsewhere): low entropy, so a confidence-weighted fusion that does not check labels trusts it.
    """

    kind = "logits"
    settings = frozenset({"confidence", "coordinated"})

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """One-hot on a wrong class."""
        rows = logits.shape[0]
        truth = self.labels_or_predictions(logits, positions)
        wrong = self.wrong_classes(truth, rng, positions)
        out = np.zeros_like(logits)
        out[np.arange(rows), wrong] = self.config.confidence
        return out


@ADVERSARIES.register("free_rider")
class FreeRider(Behaviour):
    """Skips local training; answers its stale model (mode "stale") or random values (mode "random")."""

    trains = False

    settings = frozenset({"free_rider_mode", "noise_std"})

    @classmethod
    def unread(cls, config: AdversaryConfig, experiment: ExperimentConfig) -> dict[str, str]:
        """``noise_std`` is read only by random weights (random logits take the answer's own scale)."""
        out = super().unread(config, experiment)
        if config.free_rider_mode != "random" or experiment.strategy.shares != "weights":
            out["noise_std"] = "only a free rider in mode random that shares weights reads it"
        return out

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """The untrained model's logits, or noise."""
        return random_like(logits, rng) if self.config.free_rider_mode == "random" else logits

    def corrupt_update(self, update: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """No update (the global weights echoed), or noise."""
        if self.config.free_rider_mode == "random":
            return rng.normal(0.0, self.config.noise_std, size=update.shape)
        return update


@ADVERSARIES.register("targeted")
class Targeted(Behaviour):
    """Backdoor-free targeted poisoning: ``source`` is learnt and answered as ``target``, all else honest."""

    settings = frozenset({"source", "target"})

    def poison_labels(self, labels: Tensor) -> Tensor:
        """Source-class labels become the target class."""
        out = labels.clone()
        out[labels == self.config.source] = self.config.target
        return out

    def corrupt_logits(
        self, logits: NDArray[np.float64], positions: NDArray[Any], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Rows that say ``source`` (or are labelled so) swap their source and target logits."""
        source, target = self.config.source, self.config.target
        rows = (logits.argmax(axis=1) == source) | (self.labels_or_predictions(logits, positions) == source)
        out = logits.copy()
        out[rows, source], out[rows, target] = logits[rows, target], logits[rows, source]
        return out


@ADVERSARIES.register("sign_flip")
class SignFlip(Behaviour):
    """Sends ``w_global - lambda * update``: its training pulls the global model backwards."""

    kind = "weights"
    settings = frozenset({"scale"})

    def corrupt_update(self, update: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """The reversed update."""
        return -self.config.scale * update


@ADVERSARIES.register("scaled_update")
class ScaledUpdate(Behaviour):
    """Sends ``w_global + lambda * update``: a boosted update that dominates a plain average."""

    kind = "weights"
    settings = frozenset({"scale"})

    def corrupt_update(self, update: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """The boosted update."""
        return self.config.scale * update


@ADVERSARIES.register("gaussian_update")
class GaussianUpdate(Behaviour):
    """Sends ``w_global + N(0, noise_std^2)``: an update of pure noise."""

    kind = "weights"
    settings = frozenset({"noise_std"})

    def corrupt_update(self, update: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
        """Noise instead of the update."""
        return rng.normal(0.0, self.config.noise_std, size=update.shape)
