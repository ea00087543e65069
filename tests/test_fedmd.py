"""FedMD: both runtimes agree, the consensus is the plain average, configs it cannot run are refused, bad answers
are dropped."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedmd import FedMDClient, FedMDServer, build_client_role, consensus
from fl_kd.kd.runner import build_parties
from fl_kd.kd.training import from_wire, to_wire
from fl_kd.strategies.kd import KDStrategy
from tests.test_fedmd_common import (
    BAD_ANSWERS,
    check_bad_answer_dropped,
    check_runtimes_agree_and_repeat,
    drop_client0,
    peer_config,
    run_flower,
)


def test_flower_messages_reproduce_the_reference_runner_and_the_seed_repeats() -> None:
    # Half the clients per round: a client's start-up flag must survive between rounds in the ClientApp's state.
    check_runtimes_agree_and_repeat(
        peer_config("fedmd", fraction_fit=0.5, public_per_round=40, pretrain_public=True, logits_dtype="float16")
    )


# 3 clients' logits on 2 samples, 2 classes: the consensus is their plain average, worked out by hand.
CLIENT_LOGITS = np.array(
    [
        [[1.0, 2.0], [0.0, -3.0]],
        [[3.0, 0.0], [6.0, 3.0]],
        [[2.0, 4.0], [-3.0, 0.0]],
    ]
)
CONSENSUS = np.array([[2.0, 2.0], [1.0, 0.0]])


def test_consensus_is_the_plain_average_of_logits() -> None:
    np.testing.assert_array_equal(consensus(CLIENT_LOGITS), CONSENSUS)


def test_the_server_sends_the_consensus_of_the_accepted_answers_on_its_sample() -> None:
    cfg = peer_config("fedmd", public_per_round=2, rounds=1)
    server, _ = build_parties(cfg, build_federation(cfg))
    assert isinstance(server, FedMDServer)
    positions = server.train_instruction(1, 0).arrays[kd.POSITIONS]
    assert positions.shape == (2,)
    two_classes = np.full((3, 2, 10), -5.0)  # the hand-made scores in classes 0 and 1, the rest far below
    two_classes[:, :, :2] = CLIENT_LOGITS
    answers = {
        cid: {kd.POSITIONS: positions, kd.LOGITS: two_classes[k].astype(np.float32)} for k, cid in enumerate([0, 2, 3])
    }
    assert all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    figures = server.aggregate(1, answers)
    sent = server.evaluate_instruction(1, 1).arrays
    np.testing.assert_array_equal(sent[kd.POSITIONS], positions)
    np.testing.assert_array_equal(sent[kd.SERVER_LOGITS][:, :2], CONSENSUS)
    np.testing.assert_array_equal(sent[kd.SERVER_LOGITS][:, 2:], -5.0)
    assert figures["num_answers"] == 3 and figures["num_positions"] == 2
    # Mean absolute deviation from the consensus: 22 summed over classes 0 and 1 (others agree), 3 x 2 x 10 entries.
    assert figures["client_deviation"] == pytest.approx(22 / 60)


@pytest.mark.parametrize("dtype", ["uint8", "uint5"])
def test_quantised_answers_are_averaged_as_the_log_probabilities_they_carry(dtype: str) -> None:
    cfg = peer_config("fedmd", public_per_round=2, rounds=1, logits_dtype=dtype)
    server, _ = build_parties(cfg, build_federation(cfg))
    positions = server.train_instruction(1, 0).arrays[kd.POSITIONS]
    wire = {cid: to_wire(torch.randn(2, 10, generator=torch.Generator().manual_seed(cid)), dtype) for cid in (0, 1)}
    answers = {cid: {kd.POSITIONS: positions, kd.LOGITS: logits} for cid, logits in wire.items()}
    assert all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    server.aggregate(1, answers)
    sent = server.evaluate_instruction(1, 1).arrays[kd.SERVER_LOGITS]
    assert sent.dtype == np.uint8
    mean = (from_wire(wire[0], 10).astype(np.float64) + from_wire(wire[1], 10)) / 2  # not the mean of the codes
    expected = to_wire(torch.from_numpy(mean), dtype)
    np.testing.assert_array_equal(sent, expected)


def test_the_start_up_flag_travels_with_the_client_state() -> None:
    cfg = peer_config("fedmd", rounds=1)
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    client = clients[0]
    assert isinstance(client, FedMDClient) and not client.initialised
    client.train(1, server.train_instruction(1, 0))
    state = client.state_dict()
    fresh = build_client_role(cfg, federation, 0)
    assert not fresh.initialised
    fresh.load_state_dict(state)
    assert fresh.initialised
    assert all(torch.equal(value, fresh.state_dict()[name]) for name, value in state.items())


@pytest.mark.parametrize(
    ("transfer", "strategy", "public_samples"),
    [
        ({"labelled": 30, "unlabelled": 30}, {}, 5 * 30),  # the paper's start by default: 5 epochs on 30 labels
        ({"labelled": 30, "unlabelled": 30}, {"pretrain_public": False}, 0),
        ({"labelled": 0, "unlabelled": 60}, {}, 0),  # no labels to start on: the default skips it, not refuses
    ],
)
def test_the_public_start_runs_wherever_the_transfer_set_has_labels(
    transfer: dict[str, int], strategy: dict[str, Any], public_samples: int
) -> None:
    cfg = peer_config("fedmd", transfer=transfer, rounds=1, **strategy)
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    client = clients[0]
    assert isinstance(client, FedMDClient)
    first = client.train(1, server.train_instruction(1, 0)).metrics[kd.TRAIN_SAMPLES]
    local = client.client.config.local_epochs * client.client.num_examples
    assert first == public_samples + local


@pytest.mark.parametrize(
    ("transfer", "strategy", "reason"),
    [
        ({"labelled": 30, "unlabelled": 30}, {"public_per_round": 61}, "public_per_round=61 exceeds"),
        ({"labelled": 0, "unlabelled": 60}, {"pretrain_public": True}, "needs transfer.labelled > 0"),
        ({"labelled": 30}, {"public_per_round": 0}, "strategy.public_per_round"),
        ({"labelled": 30}, {"digest_epochs": -1}, "strategy.digest_epochs"),
        ({"labelled": 30}, {"revisit_epochs": -1}, "strategy.revisit_epochs"),
        ({"labelled": 30}, {"temperature": 0.0}, "strategy.temperature"),
    ],
)
def test_a_config_fedmd_cannot_run_is_refused(transfer: dict[str, int], strategy: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        peer_config("fedmd", transfer=transfer, **strategy)


@pytest.fixture(scope="module")
def without_client0() -> KDStrategy:
    """The run in which client 0's first answer never arrives."""
    return run_flower(peer_config("fedmd", rounds=1, public_per_round=40), drop_client0)


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_bad_answer_is_dropped_and_never_reaches_the_server(case: str, without_client0: KDStrategy) -> None:
    check_bad_answer_dropped(peer_config("fedmd", rounds=1, public_per_round=40), BAD_ANSWERS[case], without_client0)
