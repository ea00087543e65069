"""Fed-ET's two halves for the generic runtimes: the ensemble-transfer server and the weight-sharing client.

Train: each sampled client receives its architecture's small model, trains it on private data and returns its
weights and sample count. Evaluate: the server has averaged, trained its large model on the ensemble and distilled
it back into the small models; each sampled client receives and loads its architecture's new small model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.fedet.server import ClientModel, EnsembleTransferServer, examples_of
from fl_kd.kd.roles import Answer, Arrays, ClientRole, Instruction, ServerRole
from fl_kd.kd.weights import check_weights, load_arrays, model_arrays

#: Array of a client's answer beside its weights: its private sample count, ``(1,)`` int64 (FedAvg's weight).
EXAMPLES = "num-examples"


class FedETServer(ServerRole):
    """Send small models, screen returned ones, transfer their ensemble into the server model and back."""

    def __init__(self, server: EnsembleTransferServer, architectures: Mapping[int, str]) -> None:
        self.server = server
        self.architectures = dict(architectures)  # client id -> architecture (its device tier's model)
        self._published: dict[str, Arrays] = {}
        # Client id -> (the answer's arrays, its public logits), computed while screening, reused by aggregate.
        self._logits: dict[int, tuple[Mapping[str, Any], Tensor]] = {}

    def _small_model(self, client_id: int) -> Arrays:
        # One copy per architecture until the small models change (they change only in aggregate).
        name = self.architectures[client_id]
        if name not in self._published:
            self._published[name] = self.server.small_model_arrays(name)
        return self._published[name]

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """The client's architecture's current small model."""
        return Instruction(self._small_model(client_id))

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Weights of the client's architecture (float32, finite) giving finite public logits, and a count >= 1."""
        if client_id not in self.architectures:
            return f"unknown client {client_id}"
        if examples_of(arrays.get(EXAMPLES)) is None:
            return f"{EXAMPLES} must be a (1,) integer array >= 1"
        name = self.architectures[client_id]
        weights = {key: value for key, value in arrays.items() if key != EXAMPLES}
        reason = check_weights(weights, self.server.reference(name))
        if reason is not None:
            return reason
        logits = self.server.client_logits(name, weights)
        if not torch.isfinite(logits).all():
            return "the model's logits on the public inputs are not finite"
        self._logits[client_id] = (arrays, logits)
        return None

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """Average per architecture, ensemble transfer into the server model, distil back into the small models."""
        models, logits = [], []
        for client_id in sorted(answers):  # fixed order keeps floating-point sums reproducible
            arrays = answers[client_id]
            name = self.architectures[client_id]
            weights = {key: value for key, value in arrays.items() if key != EXAMPLES}
            cached = self._logits.get(client_id)
            public = cached[1] if cached is not None and cached[0] is arrays else None
            logits.append(public if public is not None else self.server.client_logits(name, weights))
            models.append(ClientModel(client_id, name, weights, int(examples_of(arrays[EXAMPLES]) or 1)))
        self._logits.clear()
        stats = self.server.step(round, models, logits)
        self._published.clear()
        return stats

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """The client's architecture's small model after the transfer back."""
        return Instruction(self._small_model(client_id))

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The large server model's accuracy."""
        return self.server.evaluate(x, y)

    def save(self, path: str | Path) -> None:
        """Server model and small models."""
        self.server.save(path)


class FedETClient(ClientRole):
    """A client that trains the small model it is sent and returns it; it loads the server's transferred model."""

    def __init__(self, client: DistillClient) -> None:
        self.client = client
        self.client_id = client.client_id

    def train(self, round: int, instruction: Instruction) -> Answer:
        """Load the sent small model, train it on private data, return its weights and the sample count."""
        load_arrays(self.client.model, instruction.arrays)
        result = self.client.local_train(round)
        arrays = model_arrays(self.client.model)
        arrays[EXAMPLES] = np.array([self.client.num_examples], dtype=np.int64)
        return Answer(
            arrays,
            {
                kd.TRAIN_LOSS: float(result["loss"]),
                kd.NUM_EXAMPLES: float(result["num_examples"]),
                kd.TRAIN_SAMPLES: float(result["train_samples"]),
            },
        )

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Load the server's small model (no training)."""
        load_arrays(self.client.model, instruction.arrays)
        return {kd.TRAIN_SAMPLES: 0.0}

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The client model's accuracy."""
        return self.client.evaluate(x, y)

    def state_dict(self) -> dict[str, Tensor]:
        """The client model's weights."""
        return dict(self.client.state_dict()["model"])

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the client model's weights."""
        self.client.load_state_dict({"model": state})
