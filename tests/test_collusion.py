"""Colluding weight attacks (``alie``, ``min_max``, ``min_sum``): what the crafted update is, that only the colluders'
answers are read and rewritten, and that a run with them goes end to end in both runtimes' builder."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from torch import Tensor

from fl_kd.config import ConfigError, from_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.adversary import AttackMetricsServer, ColludingServer, malicious_of
from fl_kd.kd.adversary.collusion import alie, alie_z, collude, fltrust_adaptive, min_max, min_sum
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import FedAvgServer
from fl_kd.kd.federation import build_federation
from fl_kd.kd.roles import Arrays, Instruction, ServerRole
from fl_kd.kd.runner import run_inprocess
from tests.test_adversary import ONE_TIER, config


def updates(rows: int = 5, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 1.0, size=(rows, size))


def test_alie_shift_is_baruchs_z_max() -> None:
    """n = 20 answers: m colluders need floor(n/2 + 1) - m honest answers beyond their value."""
    assert alie_z(20, 6) == pytest.approx(NormalDist().inv_cdf(15 / 20))
    assert alie_z(20, 2) == pytest.approx(NormalDist().inv_cdf(11 / 20))
    assert alie_z(20, 10) == pytest.approx(NormalDist().inv_cdf(19 / 20))
    assert alie_z(20, 15) == pytest.approx(NormalDist().inv_cdf(0.999))  # a majority: capped, not unbounded
    assert alie_z(20, 0) == 0.0  # no colluder, no shift


def test_alie_is_the_mean_shifted_against_the_spread() -> None:
    honest = updates()
    np.testing.assert_allclose(alie(honest, 20, 1.5), honest.mean(axis=0) - 1.5 * honest.std(axis=0))
    np.testing.assert_allclose(alie(honest, 20, None), honest.mean(axis=0) - alie_z(20, 5) * honest.std(axis=0))


@pytest.mark.parametrize("craft", [min_max, min_sum])
def test_min_max_and_min_sum_step_as_far_as_their_bound_allows(craft: Any) -> None:
    honest = updates()
    crafted = craft(honest)
    pairwise = np.square(honest[:, None, :] - honest[None, :, :]).sum(axis=2)
    distances = np.square(crafted - honest).sum(axis=1)
    if craft is min_max:
        bound, reached = pairwise.max(), distances.max()
    else:
        bound, reached = pairwise.sum(axis=1).max(), distances.sum()
    assert reached <= bound * (1 + 1e-9) and reached >= 0.999 * bound  # the largest step inside the bound
    step = crafted - honest.mean(axis=0)
    direction = -honest.std(axis=0) / np.linalg.norm(honest.std(axis=0))
    np.testing.assert_allclose(step / np.linalg.norm(step), direction, atol=1e-9)  # against the spread


def test_one_colluder_has_no_spread_to_hide_in_and_sends_its_honest_update() -> None:
    honest = updates(rows=1)
    np.testing.assert_allclose(min_max(honest), honest[0], atol=1e-6)
    np.testing.assert_allclose(alie(honest, 20, None), honest[0])


def _answer(rng: np.random.Generator, size: int, num_examples: int) -> Arrays:
    return {
        "layer.weight": rng.normal(size=(size,)).astype(np.float32),
        "norm.running_var": np.ones(3, dtype=np.float32),
        kd.NUM_EXAMPLES: np.array([num_examples], dtype=np.int64),
    }


def test_collude_rewrites_only_the_colluders_per_architecture() -> None:
    """Two architectures: each group of colluders sends its own group's crafted update; honest answers and the
    sample counts and buffers are left alone."""
    rng = np.random.default_rng(1)
    sizes = {0: 6, 1: 6, 2: 6, 3: 4, 4: 4, 5: 4}  # clients 0-2 one architecture, 3-5 another
    answers = {cid: _answer(rng, size, 10 + cid) for cid, size in sizes.items()}
    references = {size: {"layer.weight": np.zeros(size, dtype=np.float32)} for size in (4, 6)}

    def reference(cid: int) -> Mapping[str, np.ndarray]:
        return references[sizes[cid]]

    out = collude(answers, frozenset({1, 2, 4, 5}), reference, lambda u, n, s: u.mean(axis=0) + 1.0)
    for cid in (0, 3):
        assert out[cid] is answers[cid]
    for group in ((1, 2), (4, 5)):
        expected = np.mean([answers[cid]["layer.weight"] for cid in group], axis=0) + 1.0
        for cid in group:
            np.testing.assert_allclose(out[cid]["layer.weight"], expected, rtol=1e-6)
            assert out[cid]["layer.weight"].dtype == np.float32
            assert out[cid]["norm.running_var"] is answers[cid]["norm.running_var"]
            assert out[cid][kd.NUM_EXAMPLES] is answers[cid][kd.NUM_EXAMPLES]


class _RecordingServer(ServerRole):
    """Refuses any weight beyond ``limit``; records what it aggregates."""

    def __init__(self, limit: float = np.inf) -> None:
        self.limit = limit
        self.seen: dict[int, Arrays] = {}

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        return Instruction({"layer.weight": np.zeros(4, dtype=np.float32)})

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        return "too large" if np.abs(arrays["layer.weight"]).max() > self.limit else None

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        self.seen = dict(answers)
        return {"num_answered": len(answers)}

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        return self.train_instruction(round, client_id)

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        return 0.0


def test_the_server_aggregates_the_crafted_answers_unless_they_fail_its_checks() -> None:
    rng = np.random.default_rng(2)
    answers = {cid: {"layer.weight": rng.normal(size=4).astype(np.float32)} for cid in range(4)}
    server = _RecordingServer()
    ColludingServer(server, frozenset({2, 3}), lambda u, n, s: u.mean(axis=0) + 100.0).aggregate(1, answers)
    assert server.seen[0] is answers[0] and server.seen[1] is answers[1]
    assert np.abs(server.seen[2]["layer.weight"]).min() > 50
    strict = _RecordingServer(limit=10.0)  # a crafted answer the checks would refuse is not sent; the honest one is
    ColludingServer(strict, frozenset({2, 3}), lambda u, n, s: u.mean(axis=0) + 100.0).aggregate(1, answers)
    assert strict.seen[2] is answers[2] and strict.seen[3] is answers[3]


def test_a_colluding_run_builds_the_side_channel_and_moves_the_robust_model() -> None:
    """Through the strategy registry (both runtimes build the server there): the colluders' answers are rewritten
    before the median, so it lands elsewhere than with the same clients honest."""
    cfg = config("fedavg", {"name": "alie", "fraction": 0.5, "z": 3.0}, aggregation="median")
    federation = build_federation(cfg)
    server = get_algorithm("fedavg").build_server(cfg, federation)
    assert isinstance(server, ColludingServer) and isinstance(server.server, AttackMetricsServer)
    assert server.colluders == frozenset(malicious_of(cfg)) and len(server.colluders) == 2
    attacked = run_inprocess(cfg, federation.data)
    honest = run_inprocess(config("fedavg", aggregation="median"), federation.data)
    assert attacked.rounds[0]["n_malicious_accepted"] == 2
    assert attacked.rounds[0]["server_acc"] != honest.rounds[0]["server_acc"]


def test_z_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="adversary.z"):
        config("fedavg", {"name": "alie", "fraction": 0.3, "z": -1.0})
    with pytest.raises(ConfigError, match="alie corrupts weights"):
        from_mapping(
            ExperimentConfig,
            {"device_profile": ONE_TIER, "strategy": {"name": "dsfl"}, "adversary": {"name": "alie", "fraction": 0.3}},
        )


def test_the_attacker_that_knows_fltrust_keeps_its_trust_and_pushes_across() -> None:
    """Positive cosine with the colluders' mean (FLTrust's server direction, as they estimate it), the mean's length,
    and the rest of it across that direction along ALIE's -sigma."""
    honest = updates()
    crafted = fltrust_adaptive(honest, 20)
    mean = honest.mean(axis=0)
    cosine = crafted @ mean / (np.linalg.norm(crafted) * np.linalg.norm(mean))
    assert 0.0 < cosine < 0.99
    assert np.linalg.norm(crafted) == pytest.approx(np.linalg.norm(mean))
    across = crafted - (crafted @ mean) / (mean @ mean) * mean
    spread = -honest.std(axis=0)
    spread_across = spread - (spread @ mean) / (mean @ mean) * mean
    assert across @ spread_across / (np.linalg.norm(across) * np.linalg.norm(spread_across)) == pytest.approx(1.0)
    # The push cos * sin / (C + m cos): with little honest trust C it peaks at a small cosine (the colluders' weight
    # hardly depends on it), with much at 45 degrees.
    few = fltrust_adaptive(honest, 6) @ mean / (np.linalg.norm(mean) ** 2)
    many = fltrust_adaptive(honest, 1000) @ mean / (np.linalg.norm(mean) ** 2)
    assert few < many and many == pytest.approx(np.sqrt(0.5), abs=0.02)


def test_the_attacker_that_knows_fltrust_computes_the_servers_update_itself() -> None:
    """fl-kd's transfer set, labels included, and the run's seed are public, so the colluders replicate the server's
    root training; their crafted update keeps a positive cosine with the server's true update, and the rest of it
    is across that update."""
    cfg = config("fedavg", {"name": "fltrust_adaptive", "fraction": 0.5}, aggregation="fltrust")
    federation = build_federation(cfg)
    server = get_algorithm("fedavg").build_server(cfg, federation)
    assert isinstance(server, ColludingServer) and server.server_training is not None
    metrics = server.server  # ColludingServer(AttackMetricsServer(FedAvgServer))
    assert isinstance(metrics, AttackMetricsServer) and isinstance(metrics.server, FedAvgServer)
    inner = metrics.server
    assert (
        inner.root is not None and server.server_training is not inner.root
    )  # their own replica, not the server's object
    published = server.train_instruction(1, 0).arrays
    ours = server.server_training(1, published)
    theirs = inner.root(1, published)
    assert all(np.array_equal(ours[name], theirs[name]) for name in published)
    assert server.calibration is None  # nothing to measure: they know the update itself

    honest = updates()
    truth = np.asarray(np.random.default_rng(5).normal(size=honest.shape[1]), dtype=np.float64)
    crafted = fltrust_adaptive(honest, 20, truth)
    cosine = crafted @ truth / (np.linalg.norm(crafted) * np.linalg.norm(truth))
    assert 0.0 < cosine < 0.99
    # Across the server's update, against what the colluders' own updates add to it.
    unit = truth / np.linalg.norm(truth)
    mean = honest.mean(axis=0)
    added = mean - (mean @ unit) * unit
    across = crafted - (crafted @ unit) * unit
    assert across @ added / (np.linalg.norm(across) * np.linalg.norm(added)) == pytest.approx(-1.0)
    assert not np.isclose(fltrust_adaptive(honest, 20, None) @ truth, crafted @ truth)  # it used the true direction


def test_an_attacker_that_only_estimates_the_servers_update_aims_closer_to_it_the_less_its_estimates_agree() -> None:
    """With two estimates from disjoint halves of its data, the attacker that knows FLTrust measures how far one
    predicts the other: where they agree it crafts as if it knew the update, where they do not it keeps more of
    its update along the estimate, so that the trust it earns survives the server's update being another."""
    honest = updates()
    estimate = np.asarray(np.random.default_rng(5).normal(size=honest.shape[1]), dtype=np.float64)
    other = estimate + 3.0 * np.asarray(np.random.default_rng(6).normal(size=honest.shape[1]), dtype=np.float64)

    def aim(crafted: np.ndarray) -> float:
        return float(crafted @ estimate / (np.linalg.norm(crafted) * np.linalg.norm(estimate)))

    known = fltrust_adaptive(honest, 20, estimate)
    assert aim(fltrust_adaptive(honest, 20, estimate, (estimate, estimate))) == pytest.approx(aim(known), abs=0.02)
    assert aim(fltrust_adaptive(honest, 20, estimate, (estimate, other))) > aim(known) + 0.1
