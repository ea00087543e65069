"""Weight sharing for the generic runtimes: FedAvg's server and the client every weight-sharing peer uses.

Train: the server sends each sampled client the global weights of its architecture; the client loads them, trains
on its private data and answers with its weights and its number of examples (a 1-element int64 array, so the
server can weight by it and screen it). The server averages the accepted answers per architecture, weighted by
sample count (FedAvg's rule, :func:`fl_kd.kd.weights.weighted_average`). Evaluate: the sampled clients receive the
new global weights, so a client's accuracy is the global model's on its test sets.

FedAvg has one architecture; :class:`WeightSharingServer` keeps one global model per architecture because FedDF
(:mod:`fl_kd.kd.feddf`) averages the same way before it distils.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.fedavg.root import FLTRUST, RootUpdate
from fl_kd.kd.robust import ROBUST_RULES, RobustSettings
from fl_kd.kd.robust_weights import fltrust_average, robust_average
from fl_kd.kd.roles import Answer, Arrays, DistillClientRole, Instruction, Phase, ServerRole
from fl_kd.kd.training import accuracy
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE
from fl_kd.kd.weights import (
    PUBLISH_HEADROOM,
    check_weights,
    load_arrays,
    model_arrays,
    weighted_average,
    within_headroom,
)

log = logging.getLogger(__name__)

#: Answer array holding the client's private training set size, ``(1,)`` int64.
NUM_EXAMPLES = kd.NUM_EXAMPLES


def split_answer(arrays: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """An answer's weights (every array but the sample count) and its sample count array (None when absent)."""
    return {name: value for name, value in arrays.items() if name != NUM_EXAMPLES}, arrays.get(NUM_EXAMPLES)


def check_num_examples(value: Any, max_examples: int) -> str | None:
    """Why ``value`` is no usable sample count: it must be an int64 array ``(1,)`` in ``[1, max_examples]``."""
    if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.shape != (1,):
        return f"{NUM_EXAMPLES} must be an int64 array of shape (1,)"
    if not 1 <= int(value[0]) <= max_examples:
        return f"{NUM_EXAMPLES} must lie in [1, {max_examples}], got {int(value[0])}"
    return None


class WeightSharingServer(ServerRole):
    """One global model per client architecture, averaged from the clients' weights by sample count.

    Parameters
    ----------
    models : Mapping[str, nn.Module]
        Architecture name -> its global model (freshly seeded).
    architecture_of : Sequence[str]
        Per client id, the architecture it trains (a key of ``models``).
    max_examples : int
        Largest sample count a client may claim (the training split's size); a larger claim is rejected.
    device : torch.device | str (default: "cpu")
        Where the server's models live.
    max_abs_value : float (default: 1e4)
        Bound on every weight of an answer (``ExperimentConfig.max_abs_value``); a fused model beyond
        ``PUBLISH_HEADROOM`` of it is not published (:func:`~fl_kd.kd.weights.within_headroom`).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        architecture_of: Sequence[str],
        max_examples: int,
        device: torch.device | str = "cpu",
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        unknown = sorted(set(architecture_of) - set(models))
        if unknown:
            raise ValueError(f"clients train architectures without a global model: {unknown}")
        self.device = torch.device(device)
        self.models = {name: model.to(self.device) for name, model in sorted(models.items())}
        self.architecture_of = list(architecture_of)
        self.max_examples = int(max_examples)
        self.max_abs_value = float(max_abs_value)
        # What goes on the wire, refreshed whenever a global model changes (one copy shared by every message).
        self.published: dict[str, Arrays] = {name: model_arrays(model) for name, model in self.models.items()}
        #: How answers are fused ("mean": FedAvg's; robust rules by :meth:`use_aggregation`).
        self.aggregation = "mean"
        self.robust = RobustSettings()
        self.root: RootUpdate | None = None
        self._shares: dict[int, float] = {}

    def use_aggregation(self, aggregation: str, settings: RobustSettings, root: RootUpdate | None = None) -> None:
        """Fuse answers by ``aggregation`` from now on: a name in :data:`fl_kd.kd.robust.ROBUST_RULES`, or
        ``"fltrust"`` against the server's own update on its root data (``root``)."""
        if aggregation == FLTRUST:
            if root is None:
                raise ValueError("aggregation fltrust needs the server's root update")
        else:
            ROBUST_RULES.get(aggregation)
        self.aggregation, self.robust, self.root = aggregation, settings, root

    def fusion_weights(self) -> dict[int, float]:
        """Client id -> its share of the last round's fusion weight (each architecture counts equally)."""
        return dict(self._shares)

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """The global weights of the client's architecture."""
        return Instruction(self.published[self.architecture_of[client_id]])

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """The weight names of the client's architecture and the sample count (none for an unknown client)."""
        if not 0 <= client_id < len(self.architecture_of):
            return frozenset()
        return frozenset(self.published[self.architecture_of[client_id]]) | {NUM_EXAMPLES}

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Weights shaped like the client's architecture (float32, finite) and a plausible sample count."""
        if not 0 <= client_id < len(self.architecture_of):
            return f"unknown client {client_id}"
        weights, num_examples = split_answer(arrays)
        reason = check_num_examples(num_examples, self.max_examples)
        if reason is None:
            reason = check_weights(weights, self.published[self.architecture_of[client_id]], self.max_abs_value)
        return reason

    def average(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, list[int]]:
        """Replace each answered architecture's global model by its clients' sample-weighted average (or the fusion
        of :meth:`use_aggregation`).

        Returns architecture -> the client ids averaged into it (sorted); architectures nobody answered for keep
        their model. Clients are summed in id order, so both runtimes give the same bits.
        """
        members: dict[str, list[int]] = {}
        for client_id in sorted(answers):
            members.setdefault(self.architecture_of[client_id], []).append(client_id)
        self._shares = {}
        for name, client_ids in sorted(members.items()):
            weights = [split_answer(answers[cid])[0] for cid in client_ids]
            counts = [float(answers[cid][NUM_EXAMPLES][0]) for cid in client_ids]
            if self.aggregation == "mean":
                fused, shares = weighted_average(weights, counts), np.asarray(counts) / math.fsum(counts)
            elif self.aggregation == FLTRUST and self.root is not None:
                reference = self.published[name]
                fused, shares = fltrust_average(weights, reference, self.root(round, reference))
            else:
                fused, shares = robust_average(weights, counts, self.aggregation, self.robust)
            if not within_headroom(fused, self.max_abs_value):
                log.warning(
                    "%s: the fused model has a weight beyond %g; the round's update is refused, the model kept",
                    name, PUBLISH_HEADROOM * self.max_abs_value,
                )  # fmt: skip
                self._shares |= dict.fromkeys(client_ids, 0.0)
                continue
            load_arrays(self.models[name], fused, self.max_abs_value)
            self.published[name] = model_arrays(self.models[name])
            self._shares |= {cid: float(share) / len(members) for cid, share in zip(client_ids, shares, strict=True)}
        return members

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """FedAvg per architecture; the round's figure is how many answers were averaged."""
        self.average(round, answers)
        return {"num_answered": len(answers)}

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """The new global weights of the client's architecture."""
        return Instruction(self.published[self.architecture_of[client_id]])

    @property
    @abstractmethod
    def server_model(self) -> nn.Module:
        """The model whose accuracy the server reports and whose weights :meth:`save` writes."""

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The server model's accuracy."""
        return accuracy(self.server_model, x, y, device=self.device)

    def save(self, path: str | Path) -> None:
        """The server model's ``state_dict`` (``torch.save``)."""
        torch.save({k: v.detach().cpu() for k, v in self.server_model.state_dict().items()}, Path(path))


class FedAvgServer(WeightSharingServer):
    """FedAvg (McMahan et al., 2017): one architecture, whose global model is the server's model."""

    def __init__(
        self,
        model: nn.Module,
        architecture: str,
        num_clients: int,
        max_examples: int,
        device: torch.device | str = "cpu",
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        super().__init__({architecture: model}, [architecture] * num_clients, max_examples, device, max_abs_value)
        self.architecture = architecture

    @property
    def server_model(self) -> nn.Module:
        """The global model."""
        return self.models[self.architecture]


class WeightSharingClient(DistillClientRole):
    """A client that loads the server's weights, trains on private data and answers with its weights.

    ``max_abs_value`` is the run's bound on a weight (the server publishes up to half of it).
    """

    def __init__(self, client: DistillClient, max_abs_value: float = DEFAULT_MAX_ABS_VALUE) -> None:
        super().__init__(client)
        self.max_abs_value = float(max_abs_value)

    def train(self, round: int, instruction: Instruction) -> Answer:
        """Load the global weights, train ``local_epochs``, answer with weights and sample count."""
        load_arrays(self.client.model, instruction.arrays, self.max_abs_value)
        result = self.client.local_train(round)
        arrays = model_arrays(self.client.model)
        arrays[NUM_EXAMPLES] = np.array([self.client.num_examples], dtype=np.int64)
        return Answer(
            arrays,
            {
                kd.TRAIN_LOSS: float(result["loss"]),
                kd.NUM_EXAMPLES: float(result["num_examples"]),
                kd.TRAIN_SAMPLES: float(result["train_samples"]),
            },
        )

    def instruction_names(self, phase: Phase) -> frozenset[str]:
        """The weight names of the client's model, in either phase."""
        return frozenset(self.client.model.state_dict())

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Load the server's new weights (no training)."""
        load_arrays(self.client.model, instruction.arrays, self.max_abs_value)
        return {kd.TRAIN_SAMPLES: 0.0}
