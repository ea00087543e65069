"""Distillation losses (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

The KD term is KL(teacher || student) on temperature-softened distributions, scaled by ``T**2`` so its
gradient keeps the same magnitude as the cross-entropy term when ``T`` changes. The direction matters: a
public FedGEMS reimplementation passes the arguments the other way round, which optimises KL(student ||
teacher).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["batchmean", "none"]


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "student and teacher logits must both be (N, C); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T**2.

    Parameters
    ----------
    student_logits : Tensor
        ``(N, C)`` logits of the model being trained; gradients flow through these.
    teacher_logits : Tensor
        ``(N, C)`` logits of the teacher; treated as constants.
    temperature : float (default: 1.0)
        Softening temperature ``T > 0``.
    reduction : {"batchmean", "none"} (default: "batchmean")
        ``"none"`` returns the per-sample KL ``(N,)`` (summed over classes), which selective distillation
        needs to mix KD and cross-entropy sample by sample; ``"batchmean"`` returns its mean, a scalar.

    Returns
    -------
    Tensor
        Scalar, or ``(N,)`` for ``reduction="none"``.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    # kl_div(log q_s, log p_t, log_target=True) = sum p_t (log p_t - log q_s) = KL(t || s); log-space for
    # stability where teacher probabilities underflow.
    per_sample = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=-1)
    per_sample = per_sample * temperature**2
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    epsilon: float,
    temperature: float = 1.0,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Hard- and soft-label learning mixed: ``eps * CE(student, y) + (1 - eps) * KD(teacher -> student)``.

    Parameters
    ----------
    student_logits : Tensor
        ``(N, C)`` logits of the model being trained.
    teacher_logits : Tensor
        ``(N, C)`` teacher logits.
    labels : Tensor
        ``(N,)`` int64 class labels of the (labelled) transfer set.
    epsilon : float
        Weight of the cross-entropy term in ``[0, 1]``; FedGEMS uses 0.75.
    temperature : float (default: 1.0)
        KD temperature.
    reduction : {"mean", "none"} (default: "mean")
        ``"none"`` gives the ``(N,)`` per-sample losses.

    Returns
    -------
    Tensor
        Scalar, or ``(N,)`` for ``reduction="none"``.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    cross_entropy = F.cross_entropy(student_logits, labels, reduction="none")
    kd = kd_loss(student_logits, teacher_logits, temperature, reduction="none")
    per_sample = epsilon * cross_entropy + (1.0 - epsilon) * kd
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
