"""Clients that hold the same weights are scored once on the global test set, and no figure changes for it."""

from __future__ import annotations

from typing import Any

import pytest
from torch import Tensor, nn

from fl_kd.kd import runner
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.runner import run_inprocess
from tests.kd_configs import tiny_config
from tests.test_fedavg import MIXED_PROFILE, weight_config


class _Counting:
    """A client role that counts how often it is scored on the global test set."""

    def __init__(self, client: Any, calls: list[int]) -> None:
        self._client, self._calls = client, calls
        self.client_id = client.client_id

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        self._calls[0] += 1
        return float(self._client.evaluate(x, y))

    def evaluate_personal(self, x: Tensor, y: Tensor) -> float:
        return float(self._client.evaluate_personal(x, y))

    def evaluated_model(self) -> nn.Module | None:
        model: nn.Module | None = self._client.evaluated_model()
        return model


def _run(monkeypatch: pytest.MonkeyPatch, cfg: ExperimentConfig, share: bool) -> tuple[list[dict[str, Any]], int]:
    """The run's rows (without times) and how many times a client was scored on the global test set."""
    calls = [0]
    evaluate_clients = runner.evaluate_clients

    def counting(federation: Any, clients: Any, test_set: Any = None) -> Any:
        return evaluate_clients(federation, [_Counting(client, calls) for client in clients], test_set)

    with monkeypatch.context() as patch:
        patch.setattr(runner, "evaluate_clients", counting)
        if not share:
            patch.setattr(runner, "_weights_key", lambda client: None)
        rows = run_inprocess(cfg).rounds
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows], calls[0]


def test_fedavg_clients_hold_the_global_model_and_are_scored_once_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = weight_config("fedavg")
    shared, once = _run(monkeypatch, cfg, share=True)
    each, every = _run(monkeypatch, cfg, share=False)
    assert shared == each
    assert (once, every) == (cfg.strategy.rounds, cfg.strategy.rounds * cfg.num_clients)


@pytest.mark.parametrize(
    "cfg",
    [
        weight_config("feddf", MIXED_PROFILE),
        tiny_config(client_finetune_epochs=1, client_keep_distilled=True, client_tail_average=0.5),
    ],
    ids=["feddf", "fedgems_keep_distilled"],
)
def test_sharing_the_score_changes_no_figure(monkeypatch: pytest.MonkeyPatch, cfg: ExperimentConfig) -> None:
    shared, fewer = _run(monkeypatch, cfg, share=True)
    each, every = _run(monkeypatch, cfg, share=False)
    assert shared == each
    assert fewer <= every == cfg.strategy.rounds * cfg.num_clients
