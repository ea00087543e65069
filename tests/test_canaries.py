"""``strategy.canaries``: labelled samples hidden in the unlabelled part screen out a client that is honest only where
it knows it is checked (``adversary=camouflage``), leave honest clients alone, and are never distilled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.kd.fedgems import SelectiveDistillServer
from fl_kd.kd.fedgems.canaries import CanaryScreen, canary_indices, canary_secret, shortfall_z
from fl_kd.kd.runner import run_inprocess
from fl_kd.secret import SERVER_KEY_ENV
from tests.kd_configs import learned_trust_server, resumed_from_checkpoint, tiny_config


def test_canaries_are_a_subset_of_the_unlabelled_part_keyed_by_seed_and_secret() -> None:
    first = canary_indices(100, 20, seed=3, secret=11)
    assert first.size == 20 and np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 100
    np.testing.assert_array_equal(first, canary_indices(100, 20, seed=3, secret=11))
    assert not np.array_equal(first, canary_indices(100, 20, seed=4, secret=11))
    assert not np.array_equal(first, canary_indices(100, 20, seed=3, secret=12))
    assert not np.array_equal(first, canary_indices(100, 20, seed=3, secret=11 + 2**32))  # both words count
    with pytest.raises(ValueError, match="canaries"):
        canary_indices(100, 100, seed=0, secret=0)


def test_the_canaries_follow_the_servers_key_not_what_a_client_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client holds the run config and the public dataset, held-out labels included; only the key is the server's."""
    server = learned_trust_server(60, canaries=20)
    assert server.options.canaries is not None and server.options.held_out is not None
    mask = server.options.canaries.mask
    np.testing.assert_array_equal(np.flatnonzero(mask), canary_indices(mask.size, 20, server.seed, canary_secret()))
    # What the earlier keying used, the reliability slice's labels, which every client holds, no longer finds them.
    from fl_kd.secret import secret_of, tensor_bytes

    from_labels = secret_of(b"fl-kd canaries", tensor_bytes(server.transfer_y[server.options.held_out].long()))
    assert not np.array_equal(np.flatnonzero(mask), canary_indices(mask.size, 20, server.seed, from_labels))
    monkeypatch.setenv(SERVER_KEY_ENV, "another key")
    other = learned_trust_server(60, canaries=20)
    assert other.options.canaries is not None
    assert not np.array_equal(mask, other.options.canaries.mask)  # same seed and data, another key: another draw
    monkeypatch.delenv(SERVER_KEY_ENV)
    with pytest.raises(ConfigError, match=f"strategy.canaries needs the server's key: set {SERVER_KEY_ENV}"):
        learned_trust_server(60, canaries=20)


def test_the_shortfall_is_a_two_proportion_z_and_zero_without_evidence() -> None:
    assert shortfall_z(90, 100, 0, 0) == 0.0 and shortfall_z(0, 0, 5, 10) == 0.0
    assert shortfall_z(100, 100, 50, 50) == 0.0  # all right on both
    assert shortfall_z(80, 100, 40, 50) == pytest.approx(0.0)
    # 0.9 against 0.1 on 100 and 50 samples: far beyond any threshold; the reverse is negative.
    assert shortfall_z(90, 100, 5, 50) > 8 and shortfall_z(10, 100, 45, 50) < -8


def test_the_screen_flags_the_client_that_lies_only_on_unlabelled_samples() -> None:
    labels = torch.arange(200) % 4
    screen = CanaryScreen(labels, count=60, seed=0, secret=5, z=3.0)
    positions = np.arange(200)
    truth = np.eye(4, dtype=np.float32)[labels.numpy()]
    lie = np.eye(4, dtype=np.float32)[(labels.numpy() + 1) % 4]
    reference_true = np.arange(50) % 4
    reference = {0: (reference_true, reference_true), 1: (reference_true, reference_true)}
    flagged, scores = screen.screen({0: (positions, truth), 1: (positions, lie)}, reference)
    assert flagged == {1} and scores[0] == 0.0 and scores[1] > 3.0
    # Tallies pool over rounds: a round without canaries leaves the verdict standing.
    no_canary = positions[~screen.mask][:10]
    again, _ = screen.screen({1: (no_canary, lie[no_canary])}, {1: (reference_true, reference_true)})
    assert again == {1}
    stripped = screen.strip({0: (positions, truth)})
    assert stripped[0][0].size == 140 and not screen.mask[stripped[0][0]].any()


def _late_liar_rounds(screen: CanaryScreen, rounds: int, lie_from: int) -> list[tuple[set[int], float]]:
    """Client 0 is right on 36 of 40 slice answers and 36 of 40 canaries each round, then on 20 canaries from round
    ``lie_from``: each round's flags and pooled z."""
    labels = torch.arange(400) % 4
    canaries = np.flatnonzero(screen.mask)
    reference_true = np.arange(40) % 4
    reference = {0: (np.where(np.arange(40) < 4, (reference_true + 1) % 4, reference_true), reference_true)}
    out = []
    for round in range(1, rounds + 1):
        guesses = labels.numpy()[canaries].copy()
        wrong = 20 if round >= lie_from else 4
        guesses[:wrong] = (guesses[:wrong] + 1) % 4
        flagged, scores = screen.screen({0: (canaries, np.eye(4, dtype=np.float32)[guesses])}, reference)
        out.append((flagged, scores[0]))
    return out


def test_the_burst_test_catches_a_liar_that_was_honest_for_rounds_before_it_lied() -> None:
    """Pooled over 8 rounds, a shortfall of 40 points in round 8 alone reads as 5 (z about 1.9); in its window of
    one round it is z about 3.9."""
    labels = torch.arange(400) % 4
    pooled = _late_liar_rounds(CanaryScreen(labels, count=40, seed=0, secret=5, z=3.0), 8, lie_from=8)
    assert all(flagged == set() and z < 3.0 for flagged, z in pooled)
    burst = _late_liar_rounds(CanaryScreen(labels, count=40, seed=0, secret=5, z=3.0, burst_z=3.0), 8, lie_from=8)
    assert [flagged for flagged, _ in burst] == [set()] * 7 + [{0}]
    assert [z for _, z in burst] == [z for _, z in pooled]  # the pooled statistic is unchanged
    with pytest.raises(ValueError, match="burst_z >= 0"):
        CanaryScreen(labels, count=40, seed=0, secret=5, z=3.0, burst_z=-1.0)


def test_the_burst_windows_compare_rounds_with_the_same_rounds_slice() -> None:
    """A client that learns fast: 16 of 40 right on the slice and on the canaries in rounds 1-2, then 40 of 40 on
    the slice and 30 of 40 on the canaries in round 3. Its round-3 canaries beat its pooled slice accuracy (0.75
    against 72 / 120), so a test against the pooled slice would pass it; its own round's slice shows the lies."""
    labels = torch.arange(400) % 4
    screen = CanaryScreen(labels, count=40, seed=0, secret=5, z=3.0, burst_z=3.0)
    canaries = np.flatnonzero(screen.mask)
    truth = np.arange(40) % 4

    def answered(right: int) -> tuple[np.ndarray, np.ndarray]:
        guesses = labels.numpy()[canaries].copy()
        guesses[right:] = (guesses[right:] + 1) % 4
        return canaries, np.eye(4, dtype=np.float32)[guesses]

    def on_slice(right: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {0: (np.where(np.arange(40) < right, truth, (truth + 1) % 4), truth)}

    for _ in range(2):
        assert screen.screen({0: answered(16)}, on_slice(16))[0] == set()
    flagged, scores = screen.screen({0: answered(30)}, on_slice(40))
    assert flagged == {0} and scores[0] < 3.0 and screen.burst_score(0) > 3.0
    assert shortfall_z(72, 120, 30, 40) < 0  # against the pooled slice, the round's canaries look better


def _server(canaries: int) -> SelectiveDistillServer:
    return learned_trust_server(60, canaries=canaries)


def _answers(server: SelectiveDistillServer) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Client 0 honest (right everywhere); client 1 camouflaged: right on the labelled part, wrong beyond it."""
    assert server.options.unlabelled_y is not None
    labels = np.concatenate([server.transfer_y.numpy(), server.options.unlabelled_y.numpy()])
    right = np.eye(4, dtype=np.float32)[labels] * 6
    wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4] * 6
    camouflaged = np.where((np.arange(100) < 40)[:, None], right, wrong)
    positions = np.arange(100)
    return {0: (positions, right), 1: (positions, camouflaged)}


def test_without_canaries_the_camouflaged_client_teaches_the_unlabelled_part() -> None:
    server = _server(canaries=0)
    stats = server.distill(1, _answers(server))
    assert stats.extra["n_unlabelled"] == 60 and "canary_screened" not in stats.extra
    assert stats.extra["teacher_unlabelled_accuracy"] < 1.0  # its lies got into the teacher


def test_canaries_screen_it_out_and_are_never_distilled() -> None:
    server = _server(canaries=20)
    stats = server.distill(1, _answers(server))
    assert stats.extra["canary_screened"] == 1 and stats.extra["canary_z_max"] > 3.0
    assert stats.extra["n_unlabelled"] == 40  # 60 unlabelled samples, 20 of them canaries
    assert stats.extra["teacher_unlabelled_accuracy"] == 1.0
    unscreened = _server(canaries=0)
    assert stats.weight_mass[1] < unscreened.distill(1, _answers(unscreened)).weight_mass[1]


def test_canaries_need_a_held_out_slice_and_fewer_than_the_unlabelled_samples() -> None:
    unlabelled = {"transfer": {"labelled": 60, "unlabelled": 40}}
    with pytest.raises(ConfigError, match="canaries"):
        tiny_config(**unlabelled, unlabelled_trust="class_reliability", canaries=5)
    with pytest.raises(ConfigError, match="canaries"):
        tiny_config(
            **unlabelled, correctness="held_out", reliability_on="held_out", unlabelled_trust="learned", canaries=40
        )


def test_an_honest_federation_passes_the_screen_and_camouflage_does_not() -> None:
    settings = {
        "rounds": 2,
        "num_clients": 4,
        "transfer": {"labelled": 60, "unlabelled": 120},
        "correctness": "held_out",
        "held_out_fraction": 0.5,
        "reliability_on": "held_out",
        "unlabelled_trust": "learned",
        "canaries": 40,
    }
    honest = run_inprocess(tiny_config(**settings)).rounds
    assert [row["canary_screened"] for row in honest] == [0, 0]
    attacked = run_inprocess(tiny_config(**settings, adversary={"name": "camouflage", "fraction": 0.5})).rounds
    assert [row["canary_screened"] for row in attacked] == [2, 2]
    assert all(row["n_unlabelled"] == 80 for row in attacked)


def test_the_tallies_survive_a_checkpoint_so_a_resumed_server_screens_alike() -> None:
    server = _server(canaries=20)
    server.distill(1, _answers(server))
    resumed = resumed_from_checkpoint(server, lambda: _server(canaries=20))
    assert resumed.options.canaries is not None and server.options.canaries is not None
    assert (
        resumed.options.canaries.tallies == server.options.canaries.tallies == {0: [20, 20, 20, 20], 1: [20, 20, 0, 20]}
    )
    assert server.distill(2, _answers(server)).extra == resumed.distill(2, _answers(resumed)).extra
    assert (
        resumed.options.canaries.rounds
        == server.options.canaries.rounds
        == {
            0: [(20, 20, 20, 20)] * 2,
            1: [(20, 20, 0, 20)] * 2,
        }
    )
