"""Fed-ET's server half for the generic runtimes (its clients are FedAvg's weight-sharing clients).

Train: each sampled client receives its architecture's small model, trains it on private data and returns its
weights and sample count. Evaluate: the server has averaged, trained its large model on the ensemble and distilled
it back into the small models; each sampled client receives and loads its architecture's new small model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fl_kd.kd.fedavg.roles import NUM_EXAMPLES, check_num_examples, split_answer
from fl_kd.kd.fedet.server import ClientModel, EnsembleTransferServer
from fl_kd.kd.roles import Arrays, Instruction, ServerRole
from fl_kd.kd.weights import check_weights


class FedETServer(ServerRole):
    """Send small models, screen returned ones, transfer their ensemble into the server model and back."""

    def __init__(self, server: EnsembleTransferServer, architectures: Mapping[int, str], max_examples: int) -> None:
        self.server = server
        self.architectures = dict(architectures)  # client id -> architecture (its device tier's model)
        self.max_examples = int(max_examples)
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

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """The weight names of the client's architecture and the sample count (none for an unknown client)."""
        if client_id not in self.architectures:
            return frozenset()
        return frozenset(self.server.reference(self.architectures[client_id])) | {NUM_EXAMPLES}

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Weights of the client's architecture (float32, finite) giving finite public logits, and a count >= 1."""
        if client_id not in self.architectures:
            return f"unknown client {client_id}"
        weights, num_examples = split_answer(arrays)
        reason = check_num_examples(num_examples, self.max_examples)
        if reason is not None:
            return reason
        name = self.architectures[client_id]
        reason = check_weights(weights, self.server.reference(name), self.server.max_abs_value)
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
            weights, num_examples = split_answer(arrays)
            cached = self._logits.get(client_id)
            public = cached[1] if cached is not None and cached[0] is arrays else None
            logits.append(public if public is not None else self.server.client_logits(name, weights))
            models.append(ClientModel(client_id, name, weights, int(num_examples[0])))
        self._logits.clear()
        stats = self.server.step(round, models, logits)
        self._published.clear()
        return stats

    def fusion_weights(self) -> dict[int, float]:
        """Client id -> its share of the last round's weight averaging."""
        return self.server.fusion_weights()

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """The client's architecture's small model after the transfer back."""
        return Instruction(self._small_model(client_id))

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The large server model's accuracy."""
        return self.server.evaluate(x, y)

    def save(self, path: str | Path) -> None:
        """Server model and small models."""
        self.server.save(path)
