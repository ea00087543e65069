"""Selective distillation server on a linear model whose logits per sample are set by hand.

With one-hot inputs ``x_j = e_j`` and a bias-free ``nn.Linear``, sample j's logits are column j of the weight,
so each sample can be placed in exactly one of the four learning cases.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fl_kd.config import ConfigError
from fl_kd.kd.fedgems.server import SelectiveDistillServer
from fl_kd.kd.fedgems.server_config import ServerDistillConfig

RIGHT, WRONG = [2.0, 0.0], [0.0, 2.0]


def _server(columns: list[list[float]], **config: Any) -> SelectiveDistillServer:
    n = len(columns)
    model = nn.Linear(n, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(columns).T)
    settings: dict[str, Any] = {
        "epochs": 1,
        "batch_size": n,
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "epsilon": 0.75,
    } | config
    return SelectiveDistillServer(
        model,
        torch.eye(n),
        torch.zeros(n, dtype=torch.long),
        ServerDistillConfig(**settings),
        seed=3,
    )


def _weight(model: nn.Module) -> torch.Tensor:
    """The weight of a test's linear model (typed: a plain ``nn.Module``'s attributes are ``Tensor | Module``)."""
    weight = model.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def _kl(teacher: list[float], student: list[float]) -> float:
    def probs(z: list[float]) -> list[float]:
        total = sum(math.exp(v) for v in z)
        return [math.exp(v) / total for v in z]

    return sum(p * math.log(p / q) for p, q in zip(probs(teacher), probs(student), strict=True))


def _four_case_server() -> SelectiveDistillServer:
    # 0: right; 1: wrong but cached; 2: wrong, a client right; 3: wrong, no client right.
    server = _server([RIGHT, WRONG, WRONG, WRONG])
    server.knowledge_cache.update([1], torch.tensor([[1.0, 0.0]]))
    return server


CLIENT_ANSWERS = {
    5: (np.array([2, 3]), np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)),  # wrong on both
    0: (np.array([2, 3]), np.array([[3.0, 0.0], [0.0, 3.0]], np.float32)),  # right on 2 only
}


def test_needed_positions_are_wrong_and_uncached() -> None:
    assert _four_case_server().needed_positions().tolist() == [2, 3]


def test_four_cases_are_counted_and_weighted_as_specified() -> None:
    server = _four_case_server()
    stats = server.distill(round=1, client_logits=CLIENT_ANSWERS)
    assert (stats.n_self, stats.n_cache, stats.n_clients, stats.n_ce_only) == (1, 1, 1, 1)
    eps = 0.75
    expected = [
        _ce(RIGHT, 0),
        eps * _ce(WRONG, 0) + (1 - eps) * _kl([1.0, 0.0], WRONG),  # from the cache
        eps * _ce(WRONG, 0) + (1 - eps) * _kl([3.0, 0.0], WRONG),  # only client 0 teaches
        _ce(WRONG, 0),
    ]
    assert stats.loss == pytest.approx(sum(expected) / 4, abs=1e-5)
    assert stats.nonzero_weight_fraction == {0: 0.5, 5: 0.0}
    assert (stats.num_answered, stats.num_teacher) == (2, 1)
    # The right sample was cached with its logits from before the step; the others were not.
    assert server.knowledge_cache.filled.tolist() == [True, True, False, False]
    assert server.knowledge_cache.get([0]).tolist() == [RIGHT]
    assert stats.cache_size == 2


def test_aijack_weighting_lets_wrong_clients_teach() -> None:
    server = _server([WRONG, WRONG], weighting="aijack_softmax")
    stats = server.distill(1, {0: (np.array([0, 1]), np.array([[3.0, 0.0], [0.0, 3.0]], np.float32))})
    # Sample 1 has only a wrong client: a teacher under the ablation, plain CE under the default rule.
    assert (stats.n_clients, stats.n_ce_only) == (2, 0)
    default = _server([WRONG, WRONG]).distill(1, {0: (np.array([0, 1]), np.array([[3.0, 0.0], [0.0, 3.0]]))})
    assert (default.n_clients, default.n_ce_only) == (1, 1)


def test_distill_moves_server_towards_the_label() -> None:
    server = _server([WRONG, WRONG, WRONG], epochs=20, lr=0.5)
    for round_ in range(1, 4):
        needed = server.needed_positions()
        server.distill(round_, {1: (needed, np.tile(np.array([[4.0, 0.0]], np.float32), (needed.size, 1)))})
    assert server.evaluate(torch.eye(3), torch.zeros(3, dtype=torch.long)) == 1.0
    assert server.needed_positions().size == 0  # all right now: nothing left to ask the clients


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ((np.array([2, 3]), np.array([[np.nan, 0.0], [0.0, 1.0]])), "non-finite"),
        ((np.array([2, 3]), np.array([[np.inf, 0.0], [0.0, 1.0]])), "non-finite"),
        ((np.array([2, 3]), np.zeros((2, 3))), "shape"),
        ((np.array([2, 3]), np.zeros((3, 2))), "shape"),
        ((np.array([2, 2]), np.zeros((2, 2))), "unique"),
        ((np.array([2, 4]), np.zeros((2, 2))), r"\[0, 4\)"),
        ((np.array([2.0, 3.0]), np.zeros((2, 2))), "integers"),
        ((np.array([[2, 3]]), np.zeros((2, 2))), "1-D"),
        ((np.array([2, 3]), np.zeros((2, 2), dtype=np.int64)), "floating"),
    ],
)
def test_bad_client_logits_raise_before_touching_the_model(answer: tuple[np.ndarray, np.ndarray], match: str) -> None:
    server = _four_case_server()
    before = server.state_dict()
    good = CLIENT_ANSWERS[0]
    with pytest.raises(ValueError, match=match):
        server.distill(1, {0: good, 7: answer})
    after = server.state_dict()
    assert torch.equal(before["model"]["weight"], after["model"]["weight"])
    assert np.array_equal(before["knowledge_cache"]["filled"], after["knowledge_cache"]["filled"])


def test_float16_answers_and_empty_answers_are_accepted() -> None:
    server = _four_case_server()
    answers = {k: (p, v.astype(np.float16)) for k, (p, v) in CLIENT_ANSWERS.items()}
    answers[9] = (np.zeros(0, np.int64), np.zeros((0, 2), np.float16))
    stats = server.distill(1, answers)
    assert stats.n_clients == 1 and stats.nonzero_weight_fraction[9] == 0.0
    assert server.distill(2, {}).n_clients == 0


def test_transfer_logits_dtype_and_values() -> None:
    server = _four_case_server()
    logits = server.transfer_logits()
    assert logits.dtype == np.float32 and logits.shape == (4, 2)
    assert logits.tolist() == [RIGHT, WRONG, WRONG, WRONG]
    assert server.transfer_logits(np.float16).dtype == np.float16
    with pytest.raises(ValueError, match="dtype"):
        server.transfer_logits(np.int32)


def test_same_seed_same_result_and_rounds_reshuffle() -> None:
    def run(round_: int) -> torch.Tensor:
        server = _server([RIGHT, WRONG, WRONG, WRONG, RIGHT, WRONG], batch_size=2, epochs=2, momentum=0.9)
        server.distill(round_, {0: (np.array([1, 2, 3]), np.full((3, 2), [3.0, 0.0], np.float32))})
        return _weight(server.model).detach().clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_state_dict_and_checkpoint_round_trip(tmp_path: Path) -> None:
    server = _four_case_server()
    server.distill(1, CLIENT_ANSWERS)
    path = tmp_path / "server.pt"
    server.save(path)

    fresh = _server([WRONG] * 4)
    fresh.load(path)
    assert torch.equal(_weight(fresh.model), _weight(server.model))
    assert fresh.knowledge_cache.filled.tolist() == server.knowledge_cache.filled.tolist()

    without_cache = _server([WRONG] * 4)
    without_cache.load(path, load_cache=False)
    assert without_cache.knowledge_cache.num_filled == 0

    pretrained = tmp_path / "pretrained.pt"
    torch.save(server.model.state_dict(), pretrained)
    bare = _server([WRONG] * 4)
    bare.load(pretrained)  # a plain model state_dict, e.g. a pretrained server model
    assert torch.equal(_weight(bare.model), _weight(server.model))

    copy = _server([WRONG] * 4)
    copy.load_state_dict(server.state_dict())
    assert torch.equal(_weight(copy.model), _weight(server.model))


def test_config_and_constructor_validation() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        ServerDistillConfig(epsilon=2.0)
    with pytest.raises(ValueError, match="weighting"):
        ServerDistillConfig(weighting="median")
    with pytest.raises(ValueError, match="disagree"):
        SelectiveDistillServer(nn.Linear(2, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        SelectiveDistillServer(nn.Linear(2, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_server_ema_is_what_the_server_shows() -> None:
    """With ``ema_decay`` the server broadcasts, queries, is evaluated and saves the average of its weights."""
    decay = 0.5
    server = _server([WRONG, WRONG, WRONG, WRONG], batch_size=2, epochs=1, lr=0.5, ema_decay=decay)
    trajectory: list[torch.Tensor] = []
    record = server._after_step

    def after_step() -> None:
        trajectory.append(_weight(server.model).detach().clone())
        record()

    server._after_step = after_step  # type: ignore[method-assign]
    server.distill(1, {0: (np.arange(4), np.full((4, 2), [4.0, 0.0], np.float32))})
    assert len(trajectory) == 2  # two mini-batches of two
    expected = decay * trajectory[0] + (1 - decay) * trajectory[1]  # the first update copies the weights
    assert torch.allclose(_weight(server.published), expected)
    assert not torch.allclose(_weight(server.published), _weight(server.model))  # training goes on from its own
    assert np.allclose(server.transfer_logits(), expected.T.numpy(), atol=1e-6)
    assert torch.equal(server.state_dict()["model"]["weight"], _weight(server.published))
    shown_right = (expected.T.argmax(dim=1) == 0).double().mean().item()
    assert server.evaluate(torch.eye(4), torch.zeros(4, dtype=torch.long)) == pytest.approx(shown_right)


def test_server_without_ema_shows_its_trained_model_and_loading_restarts_the_average(tmp_path: Path) -> None:
    plain = _server([RIGHT, WRONG])
    assert plain.ema is None and plain.published is plain.model

    server = _server([WRONG, WRONG], epochs=3, lr=0.5, ema_decay=0.9)
    server.distill(1, {0: (np.arange(2), np.full((2, 2), [4.0, 0.0], np.float32))})
    path = tmp_path / "server.pt"
    server.save(path)
    fresh = _server([WRONG, WRONG], ema_decay=0.9)
    fresh.load(path)
    assert torch.equal(_weight(fresh.model), _weight(server.published))
    assert torch.equal(_weight(fresh.published), _weight(fresh.model))  # the average starts again from the loaded one
    assert int(fresh.ema.n_averaged) == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("key", "bad"),
    [("epochs", -1), ("batch_size", 0), ("lr", 0.0), ("epsilon", 1.5), ("temperature", float("nan"))],
)
def test_server_distill_settings_are_range_checked_by_name(key: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} must be in "):
        ServerDistillConfig(**{key: bad})  # type: ignore[arg-type]


def test_server_ema_decay_is_validated() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema_decay"):
            ServerDistillConfig(ema_decay=bad)
