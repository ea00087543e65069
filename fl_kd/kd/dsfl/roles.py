"""DS-FL's two halves for the generic runtimes: the entropy-reducing aggregator and the distilling client.

Train: each sampled client trains on its private data, then answers its logits on every public position (the
server's softmax of them is the client's softmax output: the same bytes, and what DS-FL aggregates). Aggregate:
entropy reduction aggregation of the accepted answers. Evaluate: each sampled client distils the aggregated soft
labels on the public inputs. No party reads a public label.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.dsfl.config import ERA_FORMS, DSFLConfig
from fl_kd.kd.fedmd.public_logits import Figures, PublicLogitsClient, PublicLogitsServer
from fl_kd.kd.roles import Answer, Instruction
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE

#: The aggregated soft labels travel as log-probabilities and are distilled at temperature 1: exactly those labels.
SOFT_LABEL_TEMPERATURE = 1.0


def entropy_reduction(logits: NDArray[np.float64], temperature: float, form: str = "power") -> NDArray[np.float64]:
    """Entropy reduction aggregation of the clients' logits, as log-probabilities.

    The mean ``p`` of the clients' softmax outputs, sharpened by ``form`` (:attr:`DSFLConfig.era`):
    ``softmax(log(p) / T)`` for ``"power"``, the paper's ``softmax(p / T)`` for ``"softmax"``.

    Parameters
    ----------
    logits : ndarray
        ``(K, n, C)`` client logits, clients first.
    temperature : float
        Sharpening temperature ``T`` in (0, 1]; with ``"power"`` 1 gives the plain average of probabilities.
    form : str (default: "power")
        ``"power"`` or ``"softmax"``.

    Returns
    -------
    ndarray
        ``(n, C)`` float64 log of the sharpened soft labels (computed in log space, so finite where a probability
        underflows).
    """
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ValueError(f"need logits (K >= 1, n, C), got shape {logits.shape}")
    values = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    log_average = torch.logsumexp(torch.log_softmax(values, dim=2), dim=0) - math.log(values.shape[0])
    return sharpen(log_average.numpy(), temperature, form)


def sharpen(log_average: NDArray[np.float64], temperature: float, form: str) -> NDArray[np.float64]:
    """ERA's sharpening of averaged soft labels, log-probabilities ``(n, C)`` (see :func:`entropy_reduction`)."""
    if not 0.0 < temperature <= 1.0:
        raise ValueError(f"temperature must lie in (0, 1], got {temperature}")
    if form not in ERA_FORMS:
        raise ValueError(f"form must be one of {ERA_FORMS}, got {form!r}")
    values = torch.from_numpy(np.asarray(log_average, dtype=np.float64))
    scores = values if form == "power" else values.exp()
    return torch.log_softmax(scores / temperature, dim=1).numpy()


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Softmax over the last axis, in float64."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), dim=-1).numpy()


def log_normalise(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Log of ``probs`` ``(n, C)`` clipped to [1e-12, inf) and renormalised per row (a fused row may not sum to 1)."""
    clipped = np.clip(probs, 1e-12, None)
    return np.log(clipped / clipped.sum(axis=1, keepdims=True))


def mean_entropy(log_probs: NDArray[np.float64]) -> float:
    """Mean over samples of the entropy (nats) of soft labels given as log-probabilities ``(n, C)``."""
    return float(-(np.exp(log_probs) * log_probs).sum(axis=1).mean())


class DSFLServer(PublicLogitsServer):
    """Entropy reduction aggregation of the accepted clients' soft labels on the whole public set."""

    def __init__(
        self, server_model: DistillClient, strategy: DSFLConfig, seed: int, max_abs_value: float = DEFAULT_MAX_ABS_VALUE
    ) -> None:
        super().__init__(server_model, strategy, seed, None, SOFT_LABEL_TEMPERATURE, max_abs_value)
        self.era_temperature, self.era = strategy.era_temperature, strategy.era

    def soft_targets(self, logits: NDArray[np.float64]) -> tuple[NDArray[np.float64], Figures]:
        """The sharpened average, and the mean entropy before and after sharpening."""
        fused = self.fuse(softmax(logits))
        if fused is None:
            sharpened = entropy_reduction(logits, self.era_temperature, self.era)
            average = entropy_reduction(logits, 1.0)
        else:  # a robust rule fused the probabilities; ERA sharpens their renormalised log
            average = log_normalise(fused)
            sharpened = sharpen(average, self.era_temperature, self.era)
        return sharpened, {"entropy_average": mean_entropy(average), "entropy_sharpened": mean_entropy(sharpened)}

    def no_answer_figures(self) -> Figures:
        """Same keys as :meth:`soft_targets`."""
        return {"entropy_average": 0.0, "entropy_sharpened": 0.0}


class DSFLClient(PublicLogitsClient):
    """A client that trains on private data, answers logits on the public set and distils the soft labels."""

    def __init__(self, client: DistillClient, strategy: DSFLConfig) -> None:
        super().__init__(client)
        self.distill_epochs = strategy.distill_epochs

    def train(self, round: int, instruction: Instruction) -> Answer:
        """Local epochs on private data, then logits on the asked public positions."""
        query = self.checked_query(instruction)
        return self.answer(query, self.client.local_train(round))

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Distil the aggregated soft labels."""
        result = self.distil(round, instruction, "distill", self.distill_epochs, SOFT_LABEL_TEMPERATURE)
        return {kd.DISTILL_LOSS: float(result["loss"]), kd.TRAIN_SAMPLES: float(result["train_samples"])}
