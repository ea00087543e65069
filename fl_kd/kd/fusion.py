"""Fusion rules: how client logits on one transfer sample become one teacher, chosen by name.

A rule sees, for K clients and N samples, which client answered (``available``), which was right
(``correct``) and how unsure each was (``entropy`` of its softmax), and returns a score per (client, sample)
(``-inf`` for a client that must get no weight) plus which samples have a teacher at all. The weights are the
softmax of the scores over clients. New rules (robust ones, for instance) register here and become choosable as
``strategy.weighting=<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fl_kd.registry import Registry


class FusionScores(NamedTuple):
    """``scores`` ``(K, N)`` (``-inf`` = no weight) and ``has_teacher`` ``(N,)`` bool."""

    scores: Tensor
    has_teacher: Tensor


FusionRule = Callable[[Tensor, Tensor, Tensor], FusionScores]
"""``rule(correct, available, entropy) -> FusionScores``; every input is ``(K, N)``."""

FUSION_RULES: Registry[FusionRule] = Registry("fusion rule")


@FUSION_RULES.register("inverse_entropy")
def inverse_entropy(correct: Tensor, available: Tensor, entropy: Tensor) -> FusionScores:
    """FedGEMS: ``w_k = (1/H_k) / sum_{k' correct} (1/H_k')`` over the correct clients only.

    A client that is wrong on a labelled sample gets weight exactly zero; a sample without a correct client has
    no teacher. The softmax of ``-log H`` over correct clients is exactly the normalised ``1/H``, computed stably.
    """
    minus_inf = torch.full_like(entropy, float("-inf"))
    return FusionScores(torch.where(correct, -entropy.log(), minus_inf), correct.any(dim=0))


@FUSION_RULES.register("aijack_softmax")
def aijack_softmax(correct: Tensor, available: Tensor, entropy: Tensor) -> FusionScores:
    """AIJack's reimplementation, for ablations: ``w = softmax_k(correct_k / H_k)`` over all answering clients.

    Wrong clients keep weight ``e**0``, so every answered sample has a teacher.
    """
    minus_inf = torch.full_like(entropy, float("-inf"))
    return FusionScores(torch.where(available, correct.to(entropy.dtype) / entropy, minus_inf), available.any(dim=0))
