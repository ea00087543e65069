"""FedMD's two halves for the generic runtimes: the consensus server and the digesting, revisiting client.

Train: a client that has never trained does its start-up training (optionally cross-entropy on the labelled public
part, then its tier's local epochs on private data); every sampled client then scores the round's public positions.
Aggregate: the consensus is the plain per-sample average of the accepted clients' logits. Evaluate: each sampled
client digests the consensus (pure KD) and revisits its private data (cross-entropy), and is then tested.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.fedmd.config import FedMDConfig
from fl_kd.kd.fedmd.public_logits import Figures, PublicLogitsClient, PublicLogitsServer
from fl_kd.kd.roles import Answer, Instruction

#: Client state key saying the start-up training is done (kept beside the model weights between rounds).
INITIALISED = "fedmd-initialised"


def consensus(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """FedMD's consensus: the plain average over clients of logits ``(K, n, C)`` -> ``(n, C)``.

    Logits, not probabilities, as in the authors' code (their models' last layer without softmax).
    """
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ValueError(f"need logits (K >= 1, n, C), got shape {logits.shape}")
    return np.asarray(logits.mean(axis=0), dtype=np.float64)


class FedMDServer(PublicLogitsServer):
    """Consensus of the accepted clients' logits on a seeded sample of public positions."""

    def soft_targets(self, logits: NDArray[np.float64]) -> tuple[NDArray[np.float64], Figures]:
        """The consensus, and how far the clients are from it (mean absolute deviation of logits)."""
        fused = self.fuse(logits)
        average = consensus(logits) if fused is None else fused
        return average, {"client_deviation": float(np.abs(logits - average).mean())}

    def no_answer_figures(self) -> Figures:
        """Same keys as :meth:`soft_targets`."""
        return {"client_deviation": 0.0}


class FedMDClient(PublicLogitsClient):
    """A client that starts on its own data, scores the public set, digests the consensus and revisits."""

    def __init__(self, client: DistillClient, strategy: FedMDConfig) -> None:
        super().__init__(client)
        self.strategy = strategy
        self.initialised = False

    def train(self, round: int, instruction: Instruction) -> Answer:
        """Start-up training the first time this client is sampled; then its logits on the asked positions."""
        query = self.checked_query(instruction)
        trained = {"loss": 0.0, "train_samples": 0.0}
        if not self.initialised:
            trained = self._start_up(round)
            self.initialised = True
        return self.answer(query, trained)

    def _start_up(self, round: int) -> dict[str, float]:
        samples = 0.0
        client = self.client
        if self.strategy.pretrains(int(client.transfer_x.shape[0])):
            pretrained = client.train_supervised(
                round, "pretrain_public", self.strategy.pretrain_epochs, client.transfer_x, client.transfer_y
            )
            samples = pretrained["train_samples"]
        local = client.local_train(round)
        return {"loss": local["loss"], "train_samples": samples + local["train_samples"]}

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Digest the consensus, then revisit the private data."""
        strategy = self.strategy
        digest = self.distil(round, instruction, "digest", strategy.digest_epochs, strategy.temperature)
        client = self.client
        epochs = client.config.local_epochs if strategy.revisit_epochs is None else strategy.revisit_epochs
        revisit = client.train_supervised(round, "revisit", epochs)
        return {
            kd.DISTILL_LOSS: float(digest["loss"]),
            kd.TRAIN_LOSS: revisit["loss"],
            kd.TRAIN_SAMPLES: float(digest["train_samples"]) + revisit["train_samples"],
        }

    def state_dict(self) -> dict[str, Tensor]:
        """The model's weights and whether the start-up training is done."""
        return super().state_dict() | {INITIALISED: torch.tensor([int(self.initialised)])}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        weights = dict(state)
        flag = weights.pop(INITIALISED, None)
        self.initialised = flag is not None and bool(flag.reshape(-1)[0])
        super().load_state_dict(weights)
