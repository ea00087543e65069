"""The two halves of every KD algorithm, as the generic runtimes drive them.

A round is the same for every algorithm, in both runtimes (the in-process runner and the Flower apps):

1. *train*: the server gives each sampled client an :class:`Instruction` (arrays + scalars: FedGEMS' query,
   FedAvg's global weights, ...); the client trains on its private data and returns an :class:`Answer`
   (logits on the transfer set, or its weights); the server checks every answer (:meth:`ServerRole.check_answer`)
   and aggregates the accepted ones (:meth:`ServerRole.aggregate`);
2. *evaluate*: the server gives the sampled clients a second instruction (its knowledge: logits or weights), they
   take it in (:meth:`ClientRole.receive`), and every client reports its accuracy on the global and on its
   personalised test set; the server reports its own.

Only arrays and scalars cross between the halves, so a Flower strategy and a ClientApp can carry them as records
without knowing the algorithm, and the bytes on the wire are counted the same way for every algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from torch import Tensor, nn

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.training import check_positions, wire_dtype

Arrays = dict[str, NDArray[Any]]
Scalars = dict[str, bool | int | float | str]
Phase = Literal["train", "evaluate"]


@dataclass
class Instruction:
    """What the server sends one client in one phase: named arrays and scalars."""

    arrays: Arrays = field(default_factory=dict)
    config: Scalars = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Array bytes on the wire (``nbytes``, no serialisation headers)."""
        return sum(int(array.nbytes) for array in self.arrays.values())


@dataclass
class Answer:
    """What a client returns from training: named arrays for the server and scalar figures for the log."""

    arrays: Arrays = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Array bytes on the wire (``nbytes``, no serialisation headers)."""
        return sum(int(array.nbytes) for array in self.arrays.values())


class ServerRole(ABC):
    """The server half of a KD algorithm (it may hold a server model, or only aggregate)."""

    @abstractmethod
    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """What client ``client_id`` gets with its train message in ``round``."""

    @abstractmethod
    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Why a decoded answer must be dropped (wrong names, shapes, dtypes, values), or None when usable."""

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """The array names an answer of ``client_id`` may carry, so a runtime can refuse others before decoding.

        ``None`` (the default) when they are not known in advance; :meth:`check_answer` still judges the names.
        """
        return None

    @abstractmethod
    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """Learn from the accepted answers (client id -> arrays); returns the round's server figures."""

    @abstractmethod
    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """What a sampled client gets with its evaluate message: the server's knowledge for it."""

    @abstractmethod
    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Accuracy of the server's model on ``(x, y)`` (NaN for an algorithm without one)."""

    def client_model(self, client_id: int) -> str | None:
        """The model client ``client_id`` trains, when it is not its device tier's (it decides its compute cost)."""
        return None

    def save(self, path: str | Path) -> None:  # noqa: B027 - optional: algorithms without a server model skip it
        """Write the server's state for a later run (``server.pt``); nothing to write by default."""


class ServerWrapper(ServerRole):
    """A server half around ``server``, forwarding every call to it; a subclass overrides what it adds (the attack's
    figures, colluders' rewritten answers), so the algorithm's own server never knows it is wrapped."""

    def __init__(self, server: ServerRole) -> None:
        self.server = server

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """As the server."""
        return self.server.train_instruction(round, client_id)

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """As the server."""
        return self.server.answer_names(round, client_id)

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """As the server."""
        return self.server.check_answer(round, client_id, arrays)

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """As the server."""
        return self.server.aggregate(round, answers)

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """As the server."""
        return self.server.evaluate_instruction(round, client_id)

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """As the server."""
        return self.server.evaluate(x, y)

    def client_model(self, client_id: int) -> str | None:
        """As the server."""
        return self.server.client_model(client_id)

    def save(self, path: str | Path) -> None:
        """As the server."""
        self.server.save(path)


class ClientRole(ABC):
    """The client half of a KD algorithm: one client's model, private data and transfer-set view.

    :meth:`train`'s answer metrics and :meth:`receive`'s figures include ``protocol.TRAIN_SAMPLES``, the samples
    pushed through forward and backward passes, from which the round's compute cost per device is counted.
    """

    client_id: int

    @abstractmethod
    def train(self, round: int, instruction: Instruction) -> Answer:
        """Train on private data as instructed and answer the server."""

    @abstractmethod
    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Take in the server's knowledge (distil its logits, load its weights); returns figures for the log."""

    @abstractmethod
    def instruction_names(self, phase: Phase) -> frozenset[str]:
        """The array names the server's ``phase`` instruction may carry.

        Both runtimes refuse an instruction with any other name before it reaches the client (the ClientApp before
        any array decodes), as the server refuses an answer it did not ask for (:meth:`ServerRole.answer_names`).
        """

    @abstractmethod
    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Accuracy of the client's model on ``(x, y)``."""

    def evaluate_personal(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on the client's own distribution (its personalised test set): :meth:`evaluate`, unless the
        client keeps a personal model for it."""
        return self.evaluate(x, y)

    def evaluated_model(self) -> nn.Module | None:
        """The module :meth:`evaluate` scores, when its accuracy depends on that module's weights alone.

        A simulation then scores clients that hold the same weights once (FedAvg's clients all hold the global
        model after the broadcast). None, the default, has every client scored on its own.
        """
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """Everything the client keeps between rounds (a ClientApp stores it in ``context.state``)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""


class DistillClientRole(ClientRole):
    """A client half around a :class:`~fl_kd.kd.client.DistillClient`: its model, evaluation and state."""

    def __init__(self, client: DistillClient) -> None:
        self.client = client
        self.client_id = client.client_id

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The client model's accuracy."""
        return self.client.evaluate(x, y)

    def checked_query(self, instruction: Instruction) -> tuple[NDArray[np.int64], str]:
        """The public positions a train instruction asks logits on, and their wire dtype, checked before training:
        a query the client cannot answer is refused before it costs a round of local training."""
        positions = instruction.arrays.get(kd.POSITIONS)
        if not isinstance(positions, np.ndarray):
            raise ValueError(f"the server's query has no {kd.POSITIONS}")
        dtype = str(instruction.config.get(kd.LOGITS_DTYPE, "float32"))
        wire_dtype(dtype)
        return check_positions(positions, int(self.client.public_x.shape[0])), dtype

    def evaluated_model(self) -> nn.Module | None:
        """The client's shown model (:attr:`~fl_kd.kd.client.DistillClient.shown_model`), which :meth:`evaluate`
        scores."""
        return self.client.shown_model

    AVERAGE = "average."
    """Prefix of the weight average's entries (:meth:`DistillClient.keep_weight_average`) in :meth:`state_dict`."""

    def state_dict(self) -> dict[str, Tensor]:
        """The client model's weights, and its weight average's under :attr:`AVERAGE` when it keeps one."""
        state = self.client.state_dict()
        average = {self.AVERAGE + k: v for k, v in state.get("average", {}).items()}
        return dict(state["model"]) | average

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the client model's weights (and its weight average)."""
        size = len(self.AVERAGE)
        model = {k: v for k, v in state.items() if not k.startswith(self.AVERAGE)}
        average = {k[size:]: v for k, v in state.items() if k.startswith(self.AVERAGE)}
        self.client.load_state_dict({"model": model} | ({"average": average} if average else {}))
