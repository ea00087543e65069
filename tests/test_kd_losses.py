"""Hand-computed checks of the distillation losses (direction, temperature scaling, mixing)."""

from __future__ import annotations

import math

import pytest
import torch

from fl_kd.kd.losses import distillation_loss, kd_loss


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kd_loss_matches_kl_teacher_to_student_and_not_the_reverse() -> None:
    student = torch.tensor([[0.0, 0.0]])  # softmax = [0.5, 0.5]
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [0.75, 0.25]
    forward = _kl([0.75, 0.25], [0.5, 0.5])  # 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812...
    reverse = _kl([0.5, 0.5], [0.75, 0.25])  # 0.143841...
    assert forward == pytest.approx(0.1308120, abs=1e-6)
    assert abs(forward - reverse) > 0.01
    assert kd_loss(student, teacher).item() == pytest.approx(forward, abs=1e-6)
    # Swapping the roles gives the other direction, so the argument order is really tested.
    assert kd_loss(teacher, student).item() == pytest.approx(reverse, abs=1e-6)


def test_kd_loss_scales_by_temperature_squared() -> None:
    # At T=2 the teacher [ln 9, 0] softens to [0.75, 0.25]: the same KL as above, times T^2 = 4.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(9.0), 0.0]])
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * 0.1308120, abs=1e-5)


def test_kd_loss_reductions() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [5.0, 5.0]])  # second pair: identical distributions
    per_sample = kd_loss(student, teacher, reduction="none")
    assert per_sample.shape == (2,)
    assert per_sample[0].item() == pytest.approx(0.1308120, abs=1e-6)
    assert per_sample[1].item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(student, teacher).item() == pytest.approx(0.1308120 / 2, abs=1e-6)


def test_kd_loss_matches_kl_div_batchmean_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=generator)
    teacher = torch.randn(5, 4, generator=generator)
    temperature = 3.0
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student / temperature, dim=1),
            torch.softmax(teacher / temperature, dim=1),
            reduction="batchmean",
        )
        * temperature**2
    )
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_gradient_flows_only_to_student() -> None:
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0]], requires_grad=True)
    kd_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    # d KL / d s = softmax(s) - softmax(t) at T=1.
    p_teacher = math.exp(1) / (1 + math.exp(1))
    assert student.grad[0, 0].item() == pytest.approx(0.5 - p_teacher, abs=1e-6)


def test_distillation_loss_mixes_cross_entropy_and_kd() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    labels = torch.tensor([0])
    expected = 0.25 * math.log(2.0) + 0.75 * 0.1308120
    assert distillation_loss(student, teacher, labels, epsilon=0.25).item() == pytest.approx(expected, abs=1e-6)
    assert distillation_loss(student, teacher, labels, epsilon=1.0).item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert distillation_loss(student, teacher, labels, 0.5, reduction="none").shape == (1,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"reduction": "sum"}, "reduction"),
    ],
)
def test_kd_loss_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), **kwargs)  # type: ignore[arg-type]


def test_losses_reject_mismatched_shapes_and_bad_epsilon() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="epsilon"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), epsilon=1.5)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), epsilon=0.5)
