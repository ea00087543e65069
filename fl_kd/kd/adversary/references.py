"""Behaviours that are references, not attacks: what a defence is judged against."""

from __future__ import annotations

import numpy as np

from fl_kd.kd.adversary.behaviours import ADVERSARIES, Behaviour
from fl_kd.kd.roles import Answer, Instruction


@ADVERSARIES.register("absent")
class Absent(Behaviour):
    """A reference, not an attack: skips local training and sends an empty answer, which every server refuses.

    A defence that leaves every liar out still loses what the liars' private data would have taught. This run is what
    the honest clients reach without them, so beside the honest run of all clients it tells the defence's loss from
    the federation's (with 10 liars of 20, FedGEMS' screen ends 2 points under the run of all clients and level with
    its honest half alone: BENCHMARKS_KD.md).
    """

    trains = False

    def corrupt(self, answer: Answer, instruction: Instruction, rng: np.random.Generator) -> Answer:
        """No arrays: refused by the protocol check as any malformed answer is, so the server never uses it."""
        return Answer({}, dict(answer.metrics))
