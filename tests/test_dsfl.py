"""DS-FL: both runtimes agree, entropy reduction aggregation gives the known answer, no public label is read, configs
it cannot run are refused, bad answers are dropped."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.dsfl import DSFLServer, entropy_reduction, mean_entropy
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.kd.runner import build_parties, run_round
from fl_kd.strategies.kd import KDStrategy
from tests.test_fedmd_common import (
    BAD_ANSWERS,
    Rows,
    check_bad_answer_dropped,
    check_runtimes_agree_and_repeat,
    drop_client0,
    peer_config,
    run_flower,
    without_time,
)


def test_flower_messages_reproduce_the_reference_runner_and_the_seed_repeats() -> None:
    check_runtimes_agree_and_repeat(peer_config("dsfl", logits_dtype="float16", era_temperature=0.2))
    check_runtimes_agree_and_repeat(peer_config("dsfl", rounds=1, era="softmax"))  # the paper's form travels too


# Two clients' softmax outputs on 2 samples of 3 classes (sent as logits log p, whose softmax is p again).
CLIENT_PROBABILITIES = np.array(
    [
        [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],
        [[0.3, 0.5, 0.2], [0.3, 0.1, 0.6]],
    ]
)
AVERAGE = np.array([[0.4, 0.4, 0.2], [0.2, 0.1, 0.7]])
# T = 0.5 squares the average and renormalises: [.16, .16, .04] / .36 and [.04, .01, .49] / .54.
SHARPENED = np.array([[4 / 9, 4 / 9, 1 / 9], [4 / 54, 1 / 54, 49 / 54]])


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(axis=1)


def test_entropy_reduction_averages_probabilities_then_sharpens() -> None:
    logits = np.log(CLIENT_PROBABILITIES)
    np.testing.assert_allclose(np.exp(entropy_reduction(logits, 1.0)), AVERAGE, rtol=1e-12)
    sharpened = np.exp(entropy_reduction(logits, 0.5))
    np.testing.assert_allclose(sharpened, SHARPENED, rtol=1e-12)
    # The entropy drops: 1.0549 -> 0.9650 nats and 0.8018 -> 0.3548 nats.
    np.testing.assert_allclose(_entropy(AVERAGE), [1.05492, 0.80182], atol=1e-5)
    np.testing.assert_allclose(_entropy(SHARPENED), [0.96496, 0.35483], atol=1e-5)
    assert mean_entropy(entropy_reduction(logits, 0.5)) == pytest.approx(_entropy(SHARPENED).mean())
    # A sharper temperature takes it lower still, keeping the argmax.
    sharper = np.exp(entropy_reduction(logits, 0.1))
    assert np.all(_entropy(sharper) < _entropy(SHARPENED))
    assert sharper[1].argmax() == 2


def test_the_papers_era_is_a_softmax_of_the_averaged_probabilities() -> None:
    """The paper's form (``era=softmax``) against the hand computation softmax(p / T) of the average p."""
    logits = np.log(CLIENT_PROBABILITIES)
    by_hand = np.exp(AVERAGE / 0.1) / np.exp(AVERAGE / 0.1).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(entropy_reduction(logits, 0.1, "softmax")), by_hand, rtol=1e-12)
    # Probabilities in [0, 1] as logits: far milder than the default power p ** 10 at the same T, same argmax.
    power = np.exp(entropy_reduction(logits, 0.1))
    assert np.all(_entropy(by_hand) > _entropy(power)) and (by_hand.argmax(axis=1) == power.argmax(axis=1)).all()


def test_entropy_reduction_stays_finite_where_probabilities_underflow() -> None:
    logits = np.array([[[0.0, -2000.0]], [[0.0, -3000.0]]])
    assert np.isfinite(entropy_reduction(logits, 0.1)).all()


def test_the_server_sends_the_entropy_reduced_average_of_the_accepted_answers() -> None:
    cfg = peer_config("dsfl", rounds=1)  # era_temperature 0.1, the paper's
    server, _ = build_parties(cfg, build_federation(cfg))
    assert isinstance(server, DSFLServer)
    positions = server.train_instruction(1, 0).arrays[kd.POSITIONS]
    np.testing.assert_array_equal(positions, np.arange(60))  # the whole public set, labelled part included
    logits = np.random.default_rng(0).normal(0.0, 3.0, size=(3, 60, 10)).astype(np.float32)
    figures = server.aggregate(
        1, {cid: {kd.POSITIONS: positions, kd.LOGITS: logits[k]} for k, cid in enumerate([0, 1, 3])}
    )
    # By hand: each client's softmax, their mean, raised to 1 / T and renormalised.
    probabilities = np.exp(logits.astype(np.float64))
    probabilities /= probabilities.sum(axis=2, keepdims=True)
    average = probabilities.mean(axis=0)
    sharpened = average**10
    sharpened /= sharpened.sum(axis=1, keepdims=True)
    sent = server.evaluate_instruction(1, 2).arrays
    np.testing.assert_allclose(np.exp(sent[kd.SERVER_LOGITS].astype(np.float64)), sharpened, rtol=1e-5, atol=1e-12)
    assert figures["entropy_average"] == pytest.approx(_entropy(average).mean())
    assert figures["entropy_sharpened"] == pytest.approx(_entropy(sharpened).mean(), rel=1e-6)
    assert figures["entropy_sharpened"] < figures["entropy_average"]


def _rounds(cfg: ExperimentConfig, federation: Federation) -> Rows:
    server, clients = build_parties(cfg, federation)
    return without_time([run_round(cfg, r, federation, server, clients) for r in range(1, cfg.strategy.rounds + 1)])


def test_no_public_label_is_read() -> None:
    cfg = peer_config("dsfl")
    federation = build_federation(cfg)
    public = np.concatenate([federation.transfer_idx, federation.unlabelled_idx])
    data = federation.data
    labels = data.y_train.clone()
    labels[public] = (labels[public] + 1) % data.num_classes  # every public label now names another class
    relabelled = replace(federation, data=replace(data, y_train=labels))
    assert (relabelled.transfer_y != federation.transfer_y).all()
    assert _rounds(cfg, relabelled) == _rounds(cfg, federation)


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ({"era_temperature": 0.0}, "strategy.era_temperature"),
        ({"era_temperature": 1.5}, "strategy.era_temperature"),
        ({"era": "max"}, "strategy.era"),
        ({"distill_epochs": -1}, "strategy.distill_epochs"),
        ({"logits_dtype": "int8"}, "strategy.logits_dtype"),
        ({"public_per_round": 10}, "public_per_round"),  # DS-FL uses the whole public set
    ],
)
def test_a_config_dsfl_cannot_run_is_refused(strategy: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        peer_config("dsfl", **strategy)


@pytest.fixture(scope="module")
def without_client0() -> KDStrategy:
    """The run in which client 0's first answer never arrives."""
    return run_flower(peer_config("dsfl", rounds=1), drop_client0)


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_bad_answer_is_dropped_and_never_reaches_the_server(case: str, without_client0: KDStrategy) -> None:
    check_bad_answer_dropped(peer_config("dsfl", rounds=1), BAD_ANSWERS[case], without_client0)
