"""The malicious client: the honest client half of any algorithm, wrapped so that its answers lie.

The wrapper sits between the runtime and the honest :class:`~fl_kd.kd.roles.ClientRole`: it relabels the private
set when built, may skip local training, and rewrites each answer before it leaves. Receiving the server's
knowledge, evaluation and the state kept between rounds are the honest client's, so a Flower ClientApp that
rebuilds the client for every message rebuilds the same liar. Each corruption is seeded by
``(seed, client_id, round, "adversary")``: both runtimes send the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from torch import Tensor, nn

from fl_kd.kd.adversary.behaviours import Behaviour
from fl_kd.kd.client import DistillClient
from fl_kd.kd.roles import Answer, ClientRole, DistillClientRole, Instruction, Phase
from fl_kd.kd.seeding import derive_seed


class MaliciousClient(ClientRole):
    """``honest`` client half, misbehaving as ``behaviour`` says.

    Parameters
    ----------
    honest : ClientRole
        The client half the algorithm built; it must wrap a :class:`DistillClient` when the behaviour poisons
        labels or skips training.
    behaviour : Behaviour
        What to corrupt (:data:`fl_kd.kd.adversary.ADVERSARIES`).
    seed : int
        Base seed of the run.
    from_round : int (default: 1)
        The first round it misbehaves in; before it, it trains and answers as the honest client.
    """

    def __init__(self, honest: ClientRole, behaviour: Behaviour, seed: int, from_round: int = 1) -> None:
        self.honest = honest
        self.behaviour = behaviour
        self.seed = seed
        self.from_round = from_round
        self.client_id = honest.client_id
        client = _distill_client(honest)
        if client is not None:
            client.train_y = behaviour.poison_labels(client.train_y)
        elif not behaviour.trains or type(behaviour).poison_labels is not Behaviour.poison_labels:
            raise ValueError(f"{type(behaviour).__name__} needs a client half around a DistillClient")

    def train(self, round: int, instruction: Instruction) -> Answer:
        """The honest answer (trained or not), corrupted; before ``from_round``, the honest answer."""
        if round < self.from_round:
            return self.honest.train(round, instruction)
        with _local_training(self.honest, self.behaviour.trains):
            answer = self.honest.train(round, instruction)
        rng = np.random.default_rng(derive_seed(self.seed, self.client_id, round, "adversary"))
        return self.behaviour.corrupt(answer, instruction, rng)

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """As the honest client."""
        return self.honest.receive(round, instruction)

    def instruction_names(self, phase: Phase) -> frozenset[str]:
        """As the honest client."""
        return self.honest.instruction_names(phase)

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """As the honest client."""
        return self.honest.evaluate(x, y)

    def evaluate_personal(self, x: Tensor, y: Tensor) -> float:
        """As the honest client (its personal model, when it keeps one)."""
        return self.honest.evaluate_personal(x, y)

    def evaluated_model(self) -> nn.Module | None:
        """As the honest client."""
        return self.honest.evaluated_model()

    def state_dict(self) -> dict[str, Tensor]:
        """The honest client's state (the wrapper keeps none)."""
        return self.honest.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the honest client's state."""
        self.honest.load_state_dict(state)


def _distill_client(role: ClientRole) -> DistillClient | None:
    return role.client if isinstance(role, DistillClientRole) else None


@contextmanager
def _local_training(role: ClientRole, trains: bool) -> Iterator[None]:
    """Run a block with the client's local epochs as configured, or at zero (a free rider's "training")."""
    client = _distill_client(role)
    if trains or client is None:
        yield
        return
    config = client.config
    client.config = dataclasses.replace(config, local_epochs=0)
    try:
        yield
    finally:
        client.config = config
