"""Distillation client: local training, logit answers, distillation from server logits, determinism."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.losses import kd_loss


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _client(model: nn.Module | None = None, seed: int = 0, **config: Any) -> DistillClient:
    torch.manual_seed(0)
    model = model if model is not None else nn.Linear(4, 2)
    settings: dict[str, Any] = {"local_epochs": 2, "batch_size": 8, "lr": 0.1} | config
    train_x, train_y = _data(40, seed=1)
    transfer_x, transfer_y = _data(24, seed=2)
    return DistillClient(
        3,
        model,
        train_x,
        train_y,
        transfer_x,
        transfer_y,
        ClientTrainConfig(**settings),
        seed=seed,
    )


def _weight(model: nn.Module) -> torch.Tensor:
    """The weight of a test's linear model (typed: a plain ``nn.Module``'s attributes are ``Tensor | Module``)."""
    weight = model.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def test_local_train_lowers_private_cross_entropy() -> None:
    client = _client()
    before = nn.functional.cross_entropy(client.model(client.train_x), client.train_y).item()
    metrics = client.local_train(round=1)
    after = nn.functional.cross_entropy(client.model(client.train_x), client.train_y).item()
    assert after < before
    assert metrics["num_examples"] == 40.0 and metrics["loss"] > 0


def test_logits_answer_a_query() -> None:
    client = _client()
    answer = client.logits(np.array([5, 0, 7]))
    assert answer.dtype == np.float32 and answer.shape == (3, 2)
    expected = client.model(client.transfer_x[[5, 0, 7]]).detach().numpy()
    np.testing.assert_allclose(answer, expected, rtol=1e-6)
    assert client.logits(np.zeros(0, np.int64)).shape == (0, 2)
    with pytest.raises(ValueError, match="unique"):
        client.logits(np.array([1, 1]))


def test_distill_lowers_kd_loss_to_server_logits() -> None:
    client = _client(epsilon=0.0, distill_epochs=5)
    generator = torch.Generator().manual_seed(9)
    server_logits = (3 * torch.randn(24, 2, generator=generator)).numpy()
    teacher = torch.from_numpy(server_logits)

    def kd() -> float:
        with torch.no_grad():
            return kd_loss(client.model(client.transfer_x), teacher).item()

    before = kd()
    metrics = client.distill(round=1, server_logits=server_logits)
    assert kd() < before
    assert metrics["num_examples"] == 24.0
    # float16 broadcasts are accepted as well.
    client.distill(round=2, server_logits=server_logits.astype(np.float16))


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (np.full((24, 2), np.nan, np.float32), "non-finite"),
        (np.zeros((23, 2), np.float32), "shape"),
        (np.zeros((24, 3), np.float32), "shape"),
    ],
)
def test_distill_rejects_bad_server_logits(logits: np.ndarray, match: str) -> None:
    client = _client()
    before = {k: v.clone() for k, v in client.model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        client.distill(1, logits)
    for key, value in client.model.state_dict().items():
        assert torch.equal(value, before[key])


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)  # same initial weights for every run
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))


def test_same_seed_same_weights_including_dropout() -> None:
    def run(seed: int, global_draws: int = 0) -> dict[str, torch.Tensor]:
        client = _client(_dropout_model(), seed=seed)
        torch.rand(global_draws)  # whatever else the process drew must not matter
        client.local_train(1)
        client.distill(1, np.zeros((24, 2), np.float32))
        return client.state_dict()["model"]

    first, second, other = run(0), run(0, global_draws=7), run(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_phases_leave_the_global_rng_alone() -> None:
    client = _client(_dropout_model())
    state = torch.get_rng_state()
    client.local_train(1)
    client.distill(1, np.zeros((24, 2), np.float32))
    assert torch.equal(torch.get_rng_state(), state)


def test_state_dict_round_trip_and_evaluate() -> None:
    client = _client()
    client.local_train(1)
    other = _client(seed=5)
    other.load_state_dict(client.state_dict())
    x, y = _data(30, seed=4)
    assert other.evaluate(x, y) == client.evaluate(x, y)
    assert 0.0 <= client.evaluate(x, y) <= 1.0


def _step_weights(client: DistillClient) -> tuple[list[torch.Tensor], Any]:
    """The client's weights after each optimiser step, recorded by a global step hook (remove the handle)."""
    trajectory: list[torch.Tensor] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if any(p is client.model.weight for group in optimizer.param_groups for p in group["params"]):
            trajectory.append(_weight(client.model).detach().clone())

    return trajectory, register_optimizer_step_post_hook(record)


def test_weight_average_is_what_the_client_shows() -> None:
    """``keep_weight_average``: answers and accuracy come from the equal average of the weights after the last
    half of the phase's steps; training goes on exactly as without it; the state carries the average (a state
    without one restarts it from the weights)."""
    plain, averaged = _client(local_epochs=1, batch_size=10), _client(local_epochs=1, batch_size=10)
    averaged.keep_weight_average(0.5)
    assert plain.average is None and plain.shown_model is plain.model
    trajectory, handle = _step_weights(plain)
    try:
        plain.local_train(1)  # 40 private samples in batches of 10: four steps, the last two averaged
    finally:
        handle.remove()
    averaged.local_train(1)
    assert len(trajectory) == 4
    assert torch.equal(_weight(averaged.model), _weight(plain.model))  # the average never touches training
    expected = (trajectory[2] + trajectory[3]) / 2
    assert torch.allclose(_weight(averaged.shown_model), expected, atol=1e-6)
    assert not torch.allclose(expected, _weight(plain.model))
    shown = nn.Linear(4, 2)
    shown.load_state_dict(averaged.shown_model.state_dict())
    np.testing.assert_allclose(
        averaged.logits(np.arange(24)), shown(averaged.transfer_x).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    x, y = _data(30, seed=4)
    assert averaged.evaluate(x, y) == pytest.approx((shown(x).argmax(dim=1) == y).double().mean().item())

    restored = _client(seed=5)
    restored.keep_weight_average(0.5)
    restored.load_state_dict(averaged.state_dict())
    assert torch.equal(_weight(restored.model), _weight(averaged.model))
    assert torch.equal(_weight(restored.shown_model), _weight(averaged.shown_model))
    assert int(restored.average.n_averaged) == 2  # type: ignore[union-attr]
    restored.load_state_dict(plain.state_dict())
    assert torch.equal(_weight(restored.shown_model), _weight(plain.model))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="tail"):
            _client().keep_weight_average(bad)


@pytest.mark.parametrize(("batch_size", "tail", "averaged_steps"), [(40, 0.5, 1), (20, 0.5, 1), (10, 1.0, 3)])
def test_each_phase_shows_the_average_of_its_own_tail(batch_size: int, tail: float, averaged_steps: int) -> None:
    """Every phase starts the average again: after distilling, the client shows the average of the distillation's
    last ``ceil(tail * steps)`` steps, nothing of its local training; one or two steps at tail 0.5 show the last."""
    client = _client(local_epochs=1, batch_size=batch_size)
    client.keep_weight_average(tail)
    client.local_train(1)
    trajectory, handle = _step_weights(client)
    try:
        client.distill(1, np.zeros((24, 2), np.float32))  # 24 transfer samples
    finally:
        handle.remove()
    assert int(client.average.n_averaged) == averaged_steps  # type: ignore[union-attr]
    expected = torch.stack(trajectory[-averaged_steps:]).mean(dim=0)
    assert torch.allclose(_weight(client.shown_model), expected, atol=1e-6)
    if averaged_steps == 1:
        assert torch.equal(_weight(client.shown_model), _weight(client.model))


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="lr"):
        ClientTrainConfig(local_epochs=1, batch_size=8, lr=0.0)
    with pytest.raises(ValueError, match="no private"):
        DistillClient(
            0,
            nn.Linear(4, 2),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(3, 4),
            torch.zeros(3, dtype=torch.long),
            ClientTrainConfig(1, 8, 0.1),
        )


def test_max_grad_norm_bounds_every_step() -> None:
    """With ``max_grad_norm`` a plain SGD step moves the weights by at most ``lr * max_grad_norm``."""
    bound, lr = 0.01, 0.1

    def first_step(**config: Any) -> torch.Tensor:
        client = _client(local_epochs=1, batch_size=40, lr=lr, momentum=0.0, weight_decay=0.0, **config)
        before = torch.cat([p.detach().flatten().clone() for p in client.model.parameters()])
        client.local_train(round=1)  # one batch of 40: one step
        return torch.cat([p.detach().flatten() for p in client.model.parameters()]) - before

    free, clipped = first_step(), first_step(max_grad_norm=bound)
    assert free.norm() > lr * bound * 10  # the bound bites
    assert clipped.norm() == pytest.approx(lr * bound, rel=1e-4)
    assert torch.allclose(clipped / clipped.norm(), free / free.norm(), atol=1e-5)  # same direction
    assert torch.equal(first_step(max_grad_norm=100.0), free)  # a loose bound changes nothing
    with pytest.raises(ValueError, match="max_grad_norm"):
        ClientTrainConfig(local_epochs=1, batch_size=8, lr=0.1, max_grad_norm=-1.0)


def test_every_sgd_strategy_hands_its_clients_the_gradient_bound() -> None:
    """``strategy.client_max_grad_norm`` is an SGD setting of every strategy whose clients train with SGD."""
    from fl_kd.kd.algorithm import SGDStrategyConfig, available_strategies, get_algorithm
    from fl_kd.models import DeviceTier

    tier = DeviceTier("low", "cnn_tiny", 1.0)
    checked = []
    for name in available_strategies():
        config_class = get_algorithm(name).config_class
        if issubclass(config_class, SGDStrategyConfig):
            assert config_class(client_max_grad_norm=0.5).client_config(tier).max_grad_norm == 0.5
            assert config_class().client_config(tier).max_grad_norm == 0.0
            checked.append(name)
    assert {"fedgems", "dsfl", "feddf"} <= set(checked)
