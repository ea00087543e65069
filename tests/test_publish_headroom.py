"""A weight-sharing server never publishes a model its honest clients' answers could not stay beside.

One accepted answer at the answer bound (the others failed, or a robust rule picked it) once became the published
model; every honest answer trained from it then went past the bound and was refused, and FedAvg, FedDF and Fed-ET
never learned again. The server now keeps its model when a fused or distilled one leaves half the bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg.roles import NUM_EXAMPLES
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fusion import trust
from fl_kd.kd.robust import RobustSettings
from fl_kd.kd.runner import build_parties
from fl_kd.kd.weights import within_headroom
from tests.kd_configs import tiny_config


def _config(strategy: str) -> ExperimentConfig:
    cfg = tiny_config()
    return from_mapping(ExperimentConfig, to_mapping(cfg) | {"strategy": {"name": strategy, "rounds": 2}})


@pytest.mark.parametrize("strategy", ["fedavg", "fedavg_server_model", "feddf", "fedet"])
def test_a_lone_answer_at_the_bound_is_not_published_and_honest_answers_still_pass(strategy: str) -> None:
    cfg = _config(strategy)
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    weighing: Any = server  # every weight-sharing server says each client's share of the fusion
    before = {cid: server.train_instruction(1, cid).arrays for cid in range(cfg.num_clients)}
    honest = clients[0].train(1, server.train_instruction(1, 0))
    at_bound: dict[str, Any] = {
        name: np.full_like(value, cfg.max_abs_value) for name, value in honest.arrays.items() if name != NUM_EXAMPLES
    }
    at_bound[NUM_EXAMPLES] = np.array([10], dtype=np.int64)
    assert server.check_answer(1, 0, at_bound) is None  # inside the bound, so accepted
    server.aggregate(1, {0: at_bound})
    for cid in range(cfg.num_clients):
        published = server.train_instruction(2, cid).arrays
        assert within_headroom(published, cfg.max_abs_value)
        if strategy.startswith("fedavg"):  # FedDF and Fed-ET distil into their models every round, as they should
            assert all(np.array_equal(published[k], before[cid][k]) for k in published)
    assert weighing.fusion_weights().get(0, 0.0) == 0.0  # the answer's weight went nowhere
    answer = clients[1].train(2, server.train_instruction(2, 1))
    assert server.check_answer(2, 1, answer.arrays) is None


def test_an_empty_fed_et_round_reports_no_fusion_shares() -> None:
    cfg = _config("fedet")
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    weighing: Any = server  # every weight-sharing server says each client's share of the fusion
    answers = {cid: clients[cid].train(1, server.train_instruction(1, cid)).arrays for cid in range(2)}
    server.aggregate(1, answers)
    assert weighing.fusion_weights()
    server.aggregate(2, {})
    assert weighing.fusion_weights() == {}


def test_trust_weights_survive_a_power_that_underflows_them() -> None:
    """trust_power=1000 took every weight of a sample to 0 and the fusion to 0/0 (NaN); log space keeps the ratios."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 20, 4))
    values[:2, :, 2] += 10.0  # two clients always say class 2
    labels = np.full(20, -1, dtype=np.int64)
    labels[:8] = rng.integers(0, 4, 8)
    fused = trust(values, labels, RobustSettings(trust_power=1000.0))
    assert np.isfinite(fused.logits).all() and np.isclose(fused.client_weights.sum(), 1.0)
    usual = trust(values, labels, RobustSettings(trust_power=2.0))
    assert np.isfinite(usual.logits).all()
