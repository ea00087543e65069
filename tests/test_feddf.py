"""FedDF (Lin et al., NeurIPS 2020): both runtimes agree, per-architecture averaging and the ensemble teacher give
the known answer on hand-made models, bad settings are refused, and a bad answer reaches no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fl_kd.config import ConfigError
from fl_kd.kd.fedavg import NUM_EXAMPLES
from fl_kd.kd.feddf import FedDFConfig, FedDFServer, distill_into, ensemble_logits
from fl_kd.kd.losses import kd_loss
from fl_kd.kd.training import DivergedError
from tests import test_fedavg as shared


@pytest.mark.parametrize("ensemble", ["clients", "prototypes"])
def test_feddf_runs_alike_in_both_runtimes(ensemble: str) -> None:
    rows = shared.assert_runtimes_agree(
        shared.weight_config("feddf", shared.MIXED_PROFILE, fraction_fit=0.75, ensemble=ensemble)
    )
    assert all(row["num_answered"] == 3 and row["server_loss"] > 0 for row in rows)


def test_each_sampled_client_receives_its_architectures_distilled_model() -> None:
    cfg = shared.weight_config("feddf", shared.MIXED_PROFILE, fraction_fit=0.5, rounds=1)
    server = shared.assert_sampled_clients_hold(cfg, lambda server, cid: server.published[server.architecture_of[cid]])
    assert sorted(server.models) == ["cnn_small", "cnn_tiny"]


def _linear(weight: list[list[float]], bias: bool) -> nn.Linear:
    layer = nn.Linear(2, 2, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        if bias:
            layer.bias.zero_()
    return layer


def _answer(value: float, count: int, bias: bool) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "weight": np.full((2, 2), value, dtype=np.float32),
        NUM_EXAMPLES: np.array([count], dtype=np.int64),
    }
    if bias:
        arrays["bias"] = np.full(2, value, dtype=np.float32)
    return arrays


def test_per_architecture_averaging_of_three_clients_and_two_architectures() -> None:
    # Architecture "a" (with bias) for clients 0 and 2, architecture "b" (no bias) for client 1.
    models = {"a": _linear([[0, 0], [0, 0]], bias=True), "b": _linear([[0, 0], [0, 0]], bias=False)}
    config = FedDFConfig(distill_epochs=0, server_epochs=0)
    server = FedDFServer(models, ["a", "b", "a"], 100, nn.Linear(2, 2), torch.ones(4, 2), config)
    answers = {0: _answer(1.0, 10, True), 1: _answer(5.0, 7, False), 2: _answer(3.0, 30, True)}
    assert all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    # A client's answer in the other architecture's shape is refused.
    assert "missing" in str(server.check_answer(1, 1, answers[0]))
    stats = server.aggregate(1, answers)
    assert stats["num_answered"] == 3
    # a: (10 * 1 + 30 * 3) / 40 = 2.5; b: client 1 alone = 5.
    np.testing.assert_array_equal(server.evaluate_instruction(1, 0).arrays["weight"], np.full((2, 2), 2.5))
    np.testing.assert_array_equal(server.evaluate_instruction(1, 2).arrays["bias"], np.full(2, 2.5))
    np.testing.assert_array_equal(server.evaluate_instruction(1, 1).arrays["weight"], np.full((2, 2), 5.0))
    assert set(server.evaluate_instruction(1, 1).arrays) == {"weight"}


def test_the_ensemble_teacher_is_the_mean_of_the_members_logits() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    first, second = _linear([[1, 0], [0, 1]], bias=False), _linear([[0, 1], [1, 0]], bias=False)
    # first(x) = x, second(x) = x with columns swapped; the mean is each row's mean in both columns.
    expected = torch.tensor([[1.5, 1.5], [1.0, 1.0]])
    assert torch.equal(ensemble_logits([first, second], x), expected)


def test_distillation_moves_the_student_towards_the_teacher_and_repeats_itself() -> None:
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    teacher = _linear([[2, -1], [-1, 2]], bias=False)(x).detach()
    students = [_linear([[0, 0], [0, 0]], bias=True) for _ in range(2)]
    with torch.no_grad():
        before = float(kd_loss(students[0](x), teacher))
    for student in students:
        distill_into(student, x, teacher, epochs=20, batch_size=8, lr=0.05, temperature=1.0, seed=3)
    with torch.no_grad():
        assert float(kd_loss(students[0](x), teacher)) < before / 2
    shared.assert_same_state(shared.state(students[0]), shared.state(students[1]))


@pytest.mark.parametrize(
    ("setting", "key"), [({"temperature": 0.0}, "strategy.temperature"), ({"ensemble": "median"}, "strategy.ensemble")]
)
def test_settings_feddf_cannot_run_are_refused(setting: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        shared.weight_config("feddf", shared.MIXED_PROFILE, **setting)


def test_a_nan_answer_reaches_no_prototype_and_not_the_server_model() -> None:
    cfg = shared.weight_config("feddf", shared.MIXED_PROFILE, rounds=1)
    reference = shared.run_flower(cfg, shared.drop_client0).server
    strategy = shared.run_flower(cfg, shared.replace_answer(shared.BAD_ANSWERS["nan weight"]))
    assert strategy.history[0]["n_rejected"] == 1
    for name, model in reference.models.items():
        shared.assert_same_state(shared.state(strategy.server.models[name]), shared.state(model))
    shared.assert_same_state(shared.state(strategy.server.server_model), shared.state(reference.server_model))


def test_a_distillation_that_diverges_stops_with_one_error_naming_the_settings() -> None:
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    teacher = _linear([[2, -1], [-1, 2]], bias=False)(x).detach()
    student = _linear([[float("inf"), 0], [0, 0]], bias=True)  # as a step too large leaves it
    with pytest.raises(DivergedError, match=r"diverged: .* Lower strategy\.distill_lr or strategy\.server_lr"):
        distill_into(student, x, teacher, epochs=1, batch_size=8, lr=0.05, temperature=1.0, seed=3)
