"""The consensus screen on the logit-sharing peers (FedMD, DS-FL): its reference is the labelled public part, a client
it screens is left out of the round's fusion, and where nobody is screened every figure is the unscreened one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedmd.public_logits import PublicLogitsServer
from fl_kd.kd.runner import build_parties, run_inprocess
from tests.kd_configs import resumed_from_checkpoint
from tests.test_fedmd_common import check_runtimes_agree_and_repeat, peer_config

CLASSES = 10
LIAR = 3


def _server(name: str, **strategy: Any) -> PublicLogitsServer:
    cfg = peer_config(name, rounds=1, **strategy)
    server, _ = build_parties(cfg, build_federation(cfg))
    assert isinstance(server, PublicLogitsServer)
    return server


def _answers(server: PublicLogitsServer, clients: range, liar: bool) -> dict[int, dict[str, np.ndarray]]:
    """Clients that agree on every position (each with its own margins); with ``liar``, client :data:`LIAR` names
    another class wherever the position is unlabelled and agrees where it is labelled."""
    positions = server.train_instruction(1, 0).arrays[kd.POSITIONS]
    assert server.public_labels is not None
    labelled = positions < server.public_labels.size
    assert labelled.any() and not labelled.all()
    vote = (positions * 7) % CLASSES
    answers = {}
    for cid in clients:
        rng = np.random.default_rng(cid)
        logits = rng.normal(0.0, 0.5, (positions.size, CLASSES))
        named = np.where(labelled | (cid != LIAR) | (not liar), vote, (vote + 1) % CLASSES)
        logits[np.arange(positions.size), named] += 4.0
        answers[cid] = {kd.POSITIONS: positions, kd.LOGITS: logits.astype(np.float32)}
    return answers


def _sent(server: PublicLogitsServer, answers: dict[int, dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, Any]]:
    assert all(server.check_answer(1, cid, arrays) is None for cid, arrays in answers.items())
    figures = server.aggregate(1, answers)
    return server.evaluate_instruction(1, 0).arrays[kd.SERVER_LOGITS], figures


@pytest.mark.parametrize(("name", "aggregation"), [("fedmd", "trust"), ("fedmd", "mean"), ("dsfl", "mean")])
def test_a_client_that_lies_only_where_unlabelled_is_left_out_of_the_fusion(name: str, aggregation: str) -> None:
    settings = {"aggregation": aggregation, "consensus_z": 3.0}
    screened = _server(name, **settings)
    targets, figures = _sent(screened, _answers(screened, range(4), liar=True))
    assert figures["consensus_screened"] == 1 and figures["consensus_z_max"] > 3.0
    assert screened.screened_clients() == {LIAR}
    weights = screened.fusion_weights()
    assert sorted(weights) == [0, 1, 2, 3] and weights[LIAR] == 0.0
    assert sum(weights.values()) == pytest.approx(1.0)
    # Exactly what the server sends when the liar never answered.
    silent = _server(name, **settings)
    alone, _ = _sent(
        silent, {cid: arrays for cid, arrays in _answers(silent, range(4), liar=True).items() if cid != LIAR}
    )
    np.testing.assert_array_equal(targets, alone)
    # Without the screen the liar moves the targets.
    plain = _server(name, aggregation=aggregation)
    unscreened, figures = _sent(plain, _answers(plain, range(4), liar=True))
    assert "consensus_screened" not in figures and plain.screened_clients() is None
    assert not np.array_equal(unscreened, targets)


@pytest.mark.parametrize("name", ["fedmd", "dsfl"])
def test_honest_answers_are_fused_bit_for_bit_as_without_the_screen(name: str) -> None:
    screened, plain = _server(name, consensus_z=3.0), _server(name)
    with_screen, figures = _sent(screened, _answers(screened, range(4), liar=False))
    without, _ = _sent(plain, _answers(plain, range(4), liar=False))
    assert figures["consensus_screened"] == 0 and screened.screened_clients() == frozenset()
    np.testing.assert_array_equal(with_screen, without)


@pytest.mark.parametrize("name", ["fedmd", "dsfl"])
def test_flower_messages_reproduce_the_reference_runner_with_the_screen(name: str) -> None:
    check_runtimes_agree_and_repeat(peer_config(name, consensus_z=3.0, consensus_confidence=True))


def test_the_screens_tallies_survive_a_checkpoint() -> None:
    server = _server("fedmd", consensus_z=3.0)
    _sent(server, _answers(server, range(4), liar=True))
    resumed = resumed_from_checkpoint(server, lambda: _server("fedmd", consensus_z=3.0))  # type: ignore[arg-type,return-value]
    assert isinstance(resumed, PublicLogitsServer) and resumed.screen is not None and server.screen is not None
    assert resumed.screen.tallies == server.screen.tallies and resumed.screen.flagged == [LIAR]


def test_the_screen_needs_both_parts_of_the_transfer_set_and_its_confidence_test_needs_it() -> None:
    with pytest.raises(ConfigError, match=r"transfer.labelled > 0 and transfer.unlabelled > 0 \(got 30 and 0\)"):
        peer_config("dsfl", transfer={"labelled": 30, "unlabelled": 0}, consensus_z=3.0)
    with pytest.raises(ConfigError, match="strategy.consensus_confidence is a setting of the consensus screen"):
        peer_config("fedmd", consensus_confidence=True)
    with pytest.raises(ConfigError, match="strategy.consensus_margin"):
        peer_config("fedmd", consensus_z=3.0, consensus_margin=1.0)


def test_camouflaged_fedmd_clients_are_screened_by_id_and_honest_runs_are_unchanged() -> None:
    """Digits, 10 clients, 2 rounds of FedMD with per-class trust: the three camouflaged clients are screened out and
    no honest one; with nobody lying the screen changes no figure."""
    from benchmarks.kd.grid import compose_config

    peer = ["strategy=fedmd", "strategy.aggregation=trust", "transfer.unlabelled=200"]
    attack = ["adversary=camouflage", "adversary.fraction=0.3"]
    honest = run_inprocess(compose_config(0, 2, "inprocess", [*peer, "strategy.consensus_z=3"])).rounds
    plain = run_inprocess(compose_config(0, 2, "inprocess", peer)).rounds
    assert [row["consensus_screened"] for row in honest] == [0, 0]
    assert [row["server_acc"] for row in honest] == [row["server_acc"] for row in plain]
    screened = run_inprocess(compose_config(0, 2, "inprocess", [*peer, *attack, "strategy.consensus_z=3"])).rounds
    assert [(row["n_malicious_screened"], row["n_honest_screened"]) for row in screened] == [(3, 0), (3, 0)]
    assert all(row["malicious_weight_share"] == 0.0 for row in screened)
