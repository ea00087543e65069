"""``strategy.consensus_z``: a client that agrees with the other clients less on the unlabelled samples than on the
held-out slice, beyond what the median client does, is left out of the unlabelled teacher, with no label spent."""

from __future__ import annotations

import numpy as np
import pytest

from fl_kd.checkpoint import CheckpointError
from fl_kd.config import ConfigError
from fl_kd.kd.agreement import RAISE_QUANTILES, agreement_rows, confidence_strata, unsure_counts
from fl_kd.kd.consensus import MARGIN, RAISE_MARGIN, ConsensusScreen, family_z, shortfall, standard_error
from fl_kd.kd.fedgems import SelectiveDistillServer
from fl_kd.kd.runner import run_inprocess
from fl_kd.kd.training import confidence
from tests.kd_configs import learned_trust_server, resumed_from_checkpoint, tiny_config

CLASSES = 4


def _one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[classes] * 5


def _noisy(truth: np.ndarray, error: float, rng: np.random.Generator) -> np.ndarray:
    """The true classes with a share ``error`` replaced by another class."""
    wrong = rng.random(truth.size) < error
    return np.where(wrong, (truth + rng.integers(1, CLASSES, truth.size)) % CLASSES, truth)


def agreement_with_others(answers: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, tuple[int, int]]:
    """Per client, (agreed, counted) summed over its rows."""
    rows = agreement_rows(answers, CLASSES)
    return {c: (int(agreed.sum()), int(counted.sum())) for c, (agreed, counted) in rows.items()}


def test_agreement_counts_the_others_plurality_and_needs_two_others() -> None:
    positions = np.arange(3)
    answers = {
        0: (positions, _one_hot(np.array([0, 1, 2]))),
        1: (positions, _one_hot(np.array([0, 1, 3]))),
        2: (positions, _one_hot(np.array([0, 2, 3]))),
        3: (np.array([0]), _one_hot(np.array([1]))),
    }
    agreement = agreement_with_others(answers)
    # Sample 0: 0, 0, 0, 1; sample 1: 1, 1, 2 (client 3 absent); sample 2: 2, 3, 3.
    assert agreement[0] == (2, 3)  # the others vote 0, then 1 (a tie of 1 and 2 goes to the lowest), then 3
    assert agreement[1] == (2, 3)  # ... 0, 1, then 2 (a tie of 2 and 3)
    assert agreement[2] == (1, 3)  # ... 0, 1, 2
    assert agreement[3] == (0, 1)  # ... 0 on the one sample it answered
    # With only one other client answering, a sample is not counted.
    assert agreement_with_others({0: answers[0], 1: answers[1]}) == {0: (0, 0), 1: (0, 0)}


def test_the_standard_error_never_claims_certainty() -> None:
    assert shortfall([90, 100, 40, 50]) == pytest.approx(0.1)
    assert standard_error([100, 100, 50, 50]) > 0
    assert standard_error([80, 100, 400, 500]) == pytest.approx(np.sqrt(0.16 / 100 + 0.16 / 500))


def _federation(
    rng: np.random.Generator, liars: dict[int, float], common_drop: float = 0.0, checked: int = 200
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Ten clients right on about 80% of ``checked`` reference and 2,000 unlabelled samples; ``liars`` maps a client
    to the share of its unlabelled answers it turns wrong; ``common_drop`` makes every client that much less accurate
    there."""
    reference_truth, unlabelled_truth = rng.integers(0, CLASSES, checked), rng.integers(0, CLASSES, 2000)
    reference, unlabelled = {}, {}
    for client in range(10):
        reference[client] = (np.arange(checked), _one_hot(_noisy(reference_truth, 0.2, rng)))
        answer = _noisy(unlabelled_truth, 0.2 + common_drop, rng)
        lie = rng.random(answer.size) < liars.get(client, 0.0)
        answer = np.where(lie, (unlabelled_truth + 1) % CLASSES, answer)
        unlabelled[client] = (np.arange(2000), _one_hot(answer))
    return unlabelled, reference


@pytest.mark.parametrize("share", [1.0, 0.2])
def test_the_screen_flags_clients_that_lie_only_where_unchecked(share: float) -> None:
    unlabelled, reference = _federation(np.random.default_rng(0), {3: share, 7: share})
    flagged, scores = ConsensusScreen(CLASSES, z=3.0).screen(unlabelled, reference)
    assert flagged == {3, 7}
    assert max(scores[c] for c in scores if c not in (3, 7)) < 3.0


def test_a_shortfall_every_client_shares_flags_nobody() -> None:
    unlabelled, reference = _federation(np.random.default_rng(1), {}, common_drop=0.15)
    flagged, scores = ConsensusScreen(CLASSES, z=3.0).screen(unlabelled, reference)
    assert flagged == set() and max(scores.values()) < 3.0


def test_evidence_pools_over_rounds() -> None:
    """A 5% liar is below one round's power and caught once its rounds add up."""
    rng = np.random.default_rng(2)
    screen = ConsensusScreen(CLASSES, z=3.0)
    verdicts = [screen.screen(*_federation(rng, {4: 0.08}))[0] for _ in range(6)]
    assert 4 not in verdicts[0] and verdicts[-1] == {4}
    assert screen.tallies[4][1] == 6 * 200 and screen.tallies[4][3] == 6 * 2000


def test_a_small_shortfall_that_never_goes_away_is_no_evidence() -> None:
    """A client about 1.5 points short for good, as honest clients differ on the knowledge benchmark: the pooled
    standard error shrinks round after round, so without the margin it is screened; with it, never."""
    strict, screen = ConsensusScreen(CLASSES, z=3.0, margin=0.0), ConsensusScreen(CLASSES, z=3.0)
    first_flagged = None
    for round in range(12):
        answers = _federation(np.random.default_rng(20 + round), {4: 0.028}, checked=2000)
        if 4 in strict.screen(*answers)[0] and first_flagged is None:
            first_flagged = round
        assert screen.screen(*answers)[0] == set()
    excess = shortfall(strict.tallies[4]) - np.median([shortfall(tally) for tally in strict.tallies.values()])
    assert 0.01 < excess < MARGIN and first_flagged is not None and first_flagged >= 2, (excess, first_flagged)
    with pytest.raises(ValueError, match="margin must lie in"):
        ConsensusScreen(CLASSES, z=3.0, margin=1.0)


def test_the_burst_test_catches_a_liar_that_was_honest_for_rounds_before_it_lied() -> None:
    """Honest for 7 rounds, then a fifth of its unlabelled answers wrong in round 8: pooled, its excess is diluted
    below z; in the window of round 8 alone it stands out. Honest clients pass both in every round."""
    pooled, burst = ConsensusScreen(CLASSES, z=3.0), ConsensusScreen(CLASSES, z=3.0, burst_z=3.0)
    for round in range(8):
        answers = _federation(np.random.default_rng(40 + round), {6: 0.2 if round == 7 else 0.0})
        assert pooled.screen(*answers)[0] == set(), round
        assert burst.screen(*answers)[0] == ({6} if round == 7 else set()), round
    assert burst.family_scores["burst"][6] > 3.0 > pooled.family_scores["agreement"][6]
    assert max(z for c, z in burst.family_scores["burst"].items() if c != 6) < 3.0
    assert len(burst.rounds[6]) == 8 and burst.rounds[6][-1][0][1::2] == (200, 2000)
    with pytest.raises(ValueError, match="burst_z >= 0"):
        ConsensusScreen(CLASSES, z=3.0, burst_z=-1.0)
    with pytest.raises(ConfigError, match="consensus_burst_z is a setting of the consensus screen"):
        tiny_config(consensus_burst_z=3.0)


def _server(consensus_z: float) -> SelectiveDistillServer:
    return learned_trust_server(60, consensus_z=consensus_z)


def _answers(server: SelectiveDistillServer) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Clients 0-3 honest (right everywhere); client 4 camouflaged: right on the labelled part, wrong beyond it."""
    assert server.options.unlabelled_y is not None
    labels = np.concatenate([server.transfer_y.numpy(), server.options.unlabelled_y.numpy()])
    right = _one_hot(labels)
    camouflaged = np.where((np.arange(100) < 40)[:, None], right, _one_hot((labels + 1) % CLASSES))
    positions = np.arange(100)
    return {**{c: (positions, right) for c in range(4)}, 4: (positions, camouflaged)}


def test_the_server_leaves_the_camouflaged_client_out_of_the_unlabelled_teacher() -> None:
    server = _server(consensus_z=3.0)
    stats = server.distill(1, _answers(server))
    assert stats.extra["consensus_screened"] == 1 and stats.extra["consensus_z_max"] > 3.0
    assert stats.extra["consensus_z_agreement"] == stats.extra["consensus_z_max"]  # the only test asked
    assert "consensus_z_confidence" not in stats.extra
    assert stats.extra["n_unlabelled"] == 60  # nothing is withheld from distillation: no canaries
    assert stats.extra["teacher_unlabelled_accuracy"] == 1.0
    unscreened = _server(consensus_z=0.0)
    plain = unscreened.distill(1, _answers(unscreened))
    assert "consensus_screened" not in plain.extra
    assert stats.weight_mass[4] < plain.weight_mass[4]


def test_the_tallies_survive_a_checkpoint() -> None:
    def build() -> SelectiveDistillServer:
        return learned_trust_server(60, consensus_z=3.0, consensus_confidence=True, consensus_burst_z=3.0)

    server = build()
    server.distill(1, _answers(server))
    resumed = resumed_from_checkpoint(server, build)
    saved, loaded = server.options.consensus, resumed.options.consensus
    assert saved is not None and loaded is not None
    assert loaded.tallies == saved.tallies and saved.tallies[4] == [20, 20, 0, 60]
    assert loaded.confidence_tallies == saved.confidence_tallies
    assert loaded.rounds == saved.rounds and saved.rounds[4][0][0] == (20, 20, 0, 60) and len(saved.rounds[4][0]) == 8
    assert [tally[1::2] for tally in saved.confidence_tallies[4][:4]] == [[20, 60]] * 4  # the four cuts
    assert sum(tally[1] for tally in saved.confidence_tallies[4][4:]) == 20  # the three bands tested
    assert server.distill(2, _answers(server)).extra == resumed.distill(2, _answers(resumed)).extra


@pytest.mark.parametrize("change", ["another_test", "short_tally"])
def test_a_checkpoint_of_another_screen_is_refused_when_restored(change: str) -> None:
    """The confidence test once kept nine tallies per client: such a checkpoint must stop the resume with the
    reason, not the first screen with a bare ``zip`` error."""

    def build() -> SelectiveDistillServer:
        return learned_trust_server(60, consensus_z=3.0, consensus_confidence=True)

    server = build()
    server.distill(1, _answers(server))
    screen = server.options.consensus
    assert screen is not None
    if change == "another_test":
        screen.confidence_tallies[4].append([0, 0, 0, 0])
    elif change == "short_tally":
        screen.tallies[4] = screen.tallies[4][:3]
    with pytest.raises(CheckpointError, match="consensus.*(keeps 7|3 counts, not 4)"):
        resumed_from_checkpoint(server, build)


def test_the_screen_needs_unlabelled_trust_on_a_held_out_slice() -> None:
    with pytest.raises(ConfigError, match="consensus_z"):
        tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="class_reliability", consensus_z=3)
    with pytest.raises(ConfigError, match="consensus_z"):
        tiny_config(consensus_z=-1.0)
    with pytest.raises(ValueError, match="z must be > 0"):
        ConsensusScreen(CLASSES, z=0.0)
    with pytest.raises(ConfigError, match="consensus_confidence is a setting of the consensus screen"):
        tiny_config(consensus_confidence=True)


@pytest.mark.parametrize(("per_round", "warned"), [(30, True), (0, False), (60, False)])
def test_a_screen_over_a_rotating_subset_warns_of_drift_in_long_runs(
    per_round: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked a new subset each round, the samples clients distilled before become more of those asked, and an honest
    label-skewed client drifts towards the screen (BENCHMARKS_KD.md): the run says so once, at its start."""
    with caplog.at_level("WARNING", logger="fl_kd.kd.fedgems.screens"):
        learned_trust_server(60, consensus_z=3.0, unlabelled_per_round=per_round)
        learned_trust_server(60, unlabelled_per_round=per_round)  # no screen, nothing to warn of
    warnings = [r.getMessage() for r in caplog.records if "drift" in r.getMessage()]
    assert len(warnings) == int(warned), warnings
    if warned:
        assert warnings[0].startswith("strategy.consensus_z with strategy.unlabelled_per_round=30 of 60 samples")
        assert "strategy.unlabelled_per_round=0 asks every sample every round" in warnings[0]


def test_an_honest_federation_runs_as_without_the_screen_and_camouflage_is_screened() -> None:
    """Digits, 10 clients, 2 rounds of the benchmark's FedGEMS: in round 1 the honest clients still answer nearly one
    class each, so no vote of theirs is evidence; in round 2 the three camouflaged clients are screened out."""
    from benchmarks.kd.grid import compose_config

    plus = ["strategy=fedgems_plus", "transfer.unlabelled=400"]
    attack = ["adversary=camouflage", "adversary.fraction=0.3"]
    honest = run_inprocess(compose_config(0, 2, "inprocess", [*plus, "strategy.consensus_z=3"])).rounds
    plain = run_inprocess(compose_config(0, 2, "inprocess", plus)).rounds
    assert [row["consensus_screened"] for row in honest] == [0, 0]
    assert [row["server_acc"] for row in honest] == [row["server_acc"] for row in plain]
    screened = run_inprocess(compose_config(0, 2, "inprocess", [*plus, *attack, "strategy.consensus_z=3"])).rounds
    unscreened = run_inprocess(compose_config(0, 2, "inprocess", [*plus, *attack])).rounds
    assert [row["consensus_screened"] for row in screened] == [0, 3]
    assert [(row["n_malicious_screened"], row["n_honest_screened"]) for row in screened] == [(0, 0), (3, 0)]
    assert "n_honest_screened" not in unscreened[1]  # no screen, no count of whom it left out
    assert screened[1]["teacher_unlabelled_accuracy"] > unscreened[1]["teacher_unlabelled_accuracy"] + 0.1


def test_liars_that_vote_the_truth_together_do_not_frame_the_honest_clients() -> None:
    """Liars answering the truth where labels check them swell the vote there; screened out, they leave the vote."""
    rng = np.random.default_rng(0)
    reference_truth, unlabelled_truth = rng.integers(0, CLASSES, 300), rng.integers(0, CLASSES, 3000)
    reference, unlabelled = {}, {}
    for client in range(10):
        error = 0.0 if client < 2 else 0.35  # two sharp honest clients agree most with a swollen vote
        reference[client] = (np.arange(300), _one_hot(_noisy(reference_truth, error, rng)))
        unlabelled[client] = (np.arange(3000), _one_hot(_noisy(unlabelled_truth, error, rng)))
    for liar in (7, 8, 9):
        reference[liar] = (np.arange(300), _one_hot(reference_truth))
        unlabelled[liar] = (np.arange(3000), _one_hot((unlabelled_truth + 1 + liar % 3) % CLASSES))
    screen = ConsensusScreen(CLASSES, z=3.0)
    first_pass = screen._verdict(screen._counts(unlabelled, reference, voters=set(range(10))))[0]
    flagged, _ = screen.screen(unlabelled, reference)
    assert first_pass == {0, 1, 7, 8, 9} and flagged == {7, 8, 9}


def test_the_confidence_test_counts_answers_below_each_quantile_where_checked() -> None:
    probs = np.linspace(0.3, 0.9, 10)  # the reference's confidences; its quantiles fall between two of them
    as_logits = np.log(np.stack([probs, *(np.full(10, (1 - probs) / 3),) * 3], axis=1))
    np.testing.assert_allclose(confidence(as_logits), probs)
    elsewhere = as_logits[[0, 1, 9, 9]]  # two unsure answers and two as sure as its surest where checked
    own, there = confidence_strata(as_logits, as_logits), confidence_strata(as_logits, elsewhere)
    assert unsure_counts(own, there) == [(2, 10, 2, 4), (4, 10, 2, 4), (6, 10, 2, 4), (8, 10, 2, 4)]
    assert unsure_counts(own[:0], there) == [(0, 0, 0, 0)] * 4


def _unsure_liars(
    rng: np.random.Generator, lie_as: str, liars: tuple[int, ...] = (3, 7)
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Ten clients whose stated confidence tracks how often they are right (0.97 on easy samples, 0.37 on the
    hardest) and whose runner-up is the truth where they are wrong; ``liars`` turn their least sure fifth of
    the unlabelled answers into their runner-up: one-hot (``lie_as="one_hot"``), as sure as their answers at their 75%
    quantile where checked ("quantile"), with the top two logits swapped ("swap"), or swapped and then stated with
    the confidences of as many of their surest other answers, which take the lies' ("traded")."""

    def answers(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = truth.size
        sure = np.clip(0.97 - 0.6 * rng.random(n) + rng.normal(0, 0.05, n), 0.3, 0.995)
        right = rng.random(n) < sure
        other = (truth + rng.integers(1, CLASSES, n)) % CLASSES
        top, runner_up = np.where(right, truth, other), np.where(right, other, truth)
        probs = np.repeat(((1 - sure) * 0.3 / (CLASSES - 2))[:, None], CLASSES, axis=1)
        probs[np.arange(n), top], probs[np.arange(n), runner_up] = sure, (1 - sure) * 0.7
        return np.log(probs), sure

    reference_truth, unlabelled_truth = rng.integers(0, CLASSES, 200), rng.integers(0, CLASSES, 2000)
    reference, unlabelled = {}, {}
    for client in range(10):
        reference[client] = (np.arange(200), answers(reference_truth)[0])
        logits, sure = answers(unlabelled_truth)
        if client in liars:
            rows = np.flatnonzero(sure <= np.quantile(sure, 0.2))
            ranked = np.argsort(logits[rows], axis=1)
            top, runner_up = ranked[:, -1], ranked[:, -2]
            lie = logits.copy()
            if lie_as == "one_hot":
                lie[rows] = _one_hot(runner_up) * 2
            elif lie_as == "traded":  # the lies take the confidences of its surest other answers, and they the lies'
                lie[rows, top], lie[rows, runner_up] = logits[rows, runner_up], logits[rows, top]
                sure_now = confidence(lie)
                others = np.setdiff1d(np.arange(sure_now.size), rows)
                donors = others[np.argsort(-sure_now[others])][: rows.size]
                for part, stated in ((rows, sure_now[donors]), (donors, sure_now[rows])):
                    said = lie[part].argmax(axis=1)
                    lie[part] = np.log((1 - stated) / (CLASSES - 1))[:, None]
                    lie[part, said] = np.log(stated)
            elif lie_as == "quantile":  # as sure as its answers at their 75% quantile where checked
                as_sure = np.quantile(confidence(reference[client][1]), 0.75)
                lie[rows] = np.log((1 - as_sure) / (CLASSES - 1))
                lie[rows, runner_up] = np.log(as_sure)
            else:
                lie[rows, top], lie[rows, runner_up] = logits[rows, runner_up], logits[rows, top]
            logits = lie
        unlabelled[client] = (np.arange(2000), logits)
    return unlabelled, reference


@pytest.mark.parametrize("lie_as", ["one_hot", "quantile", "traded"])
def test_the_confidence_test_flags_a_liar_that_lies_surer_where_it_is_least_sure(lie_as: str) -> None:
    """Its runner-up is often right where it is unsure, so its agreement hardly falls; the certainty it states does,
    or, when it trades stated confidences between its answers, its agreement where it says it is sure."""
    agreement, both = ConsensusScreen(CLASSES, z=3.0), ConsensusScreen(CLASSES, z=3.0, confidence_test=True)
    for round in range(3):
        unlabelled, reference = _unsure_liars(np.random.default_rng(10 + round), lie_as)
        missed, _ = agreement.screen(unlabelled, reference)
        flagged, scores = both.screen(unlabelled, reference)
        assert missed == set() and flagged == {3, 7}
        assert max(z for c, z in scores.items() if c not in (3, 7)) < 3.0
        # the confidence family screened them, not the agreement test, and each client's z is its families' largest
        assert set(both.family_scores) == {"agreement", "confidence"} and set(agreement.family_scores) == {"agreement"}
        assert all(both.family_scores["agreement"][c] <= 3.0 < both.family_scores["confidence"][c] for c in (3, 7))
        assert scores == {c: max(f[c] for f in both.family_scores.values()) for c in scores}


def test_the_burst_windows_run_the_confidence_test_too() -> None:
    """Honest for 7 rounds, then clients 3 and 7 lie surer where they are least sure in round 8: pooled, the
    confidence test's evidence is diluted; in the window of round 8 it screens them (the agreement hardly falls)."""
    pooled = ConsensusScreen(CLASSES, z=3.0, confidence_test=True)
    burst = ConsensusScreen(CLASSES, z=3.0, confidence_test=True, burst_z=3.0)
    for round in range(8):
        answers = _unsure_liars(np.random.default_rng(60 + round), "one_hot", liars=(3, 7) if round == 7 else ())
        assert pooled.screen(*answers)[0] == set(), round
        assert burst.screen(*answers)[0] == ({3, 7} if round == 7 else set()), round
    assert all(burst.family_scores["burst"][c] > 3.0 > pooled.family_scores["confidence"][c] for c in (3, 7))
    assert max(z for c, z in burst.family_scores["burst"].items() if c not in (3, 7)) < 3.0
    assert all(len(counts) == burst.num_tests for counts in burst.rounds[3])


def test_a_lie_stated_with_its_honest_confidence_passes_the_confidence_test() -> None:
    """The limit the docstring names: swapping its top two logits keeps the confidence it states."""
    screen = ConsensusScreen(CLASSES, z=3.0, confidence_test=True)
    flagged, scores = screen.screen(*_unsure_liars(np.random.default_rng(5), "swap"))
    assert flagged == set() and max(scores.values()) < 3.0
    assert screen.confidence_tallies[3][0][2] == pytest.approx(screen.confidence_tallies[0][0][2], rel=0.15)


def test_the_strata_follow_the_cuts_and_nine_tests_alarm_as_rarely_as_one() -> None:
    probs = np.linspace(0.3, 0.9, 10)
    as_logits = np.log(np.stack([probs, *(np.full(10, (1 - probs) / 3),) * 3], axis=1))
    np.testing.assert_array_equal(confidence_strata(as_logits, as_logits), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert np.all(confidence_strata(as_logits[:0], as_logits) == 0)
    assert family_z(3.0, 1) == pytest.approx(3.0)
    assert family_z(3.64, 9) == pytest.approx(3.0, abs=0.05) and family_z(-1.0, 9) == -1.0
    assert family_z(60.0, 9) == 60.0  # a tail below what a float holds keeps its z


def _skewed(answers: dict[int, tuple[np.ndarray, np.ndarray]], liars: tuple[int, ...], seed: int) -> None:
    """In place: ``liars`` keep their top class on every row and lift one other class, the same for all of them, to
    0.1 nats under it (``adversary.lie_as=skewed``, coordinated)."""
    positions, first = answers[liars[0]]
    lifted = (first.argmax(axis=1) + np.random.default_rng(seed).integers(1, CLASSES, positions.size)) % CLASSES
    for liar in liars:
        logits = answers[liar][1].copy()
        rows = np.arange(positions.size)
        top = logits.argmax(axis=1)
        wrong = np.where(lifted == top, (lifted + 1) % CLASSES, lifted)
        logits[rows, wrong] = np.maximum(logits[rows, wrong], logits[rows, top] - 0.1)
        answers[liar] = (positions, logits)


def test_the_raise_test_flags_colluders_that_name_their_honest_class_and_lift_another() -> None:
    """Every class they name is their honest one, so agreement and confidence pass them; the class they lift sits
    far above what the others give it, which honest clients do about as often where they are checked as elsewhere."""
    plain = ConsensusScreen(CLASSES, z=3.0, confidence_test=True)
    lifted = ConsensusScreen(CLASSES, z=3.0, confidence_test=True, raise_test=True)
    for round in range(3):
        unlabelled, reference = _unsure_liars(np.random.default_rng(20 + round), "one_hot", liars=())
        _skewed(unlabelled, (3, 7), seed=round)
        missed, _ = plain.screen(unlabelled, reference)
        flagged, scores = lifted.screen(unlabelled, reference)
        assert missed == set() and flagged == {3, 7}
        assert max(z for c, z in scores.items() if c not in (3, 7)) < 3.0
        assert set(lifted.family_scores) == {"agreement", "confidence", "raise"}
        assert all(lifted.family_scores["raise"][c] > 3.0 for c in (3, 7))
    assert lifted.num_tests == plain.num_tests + len(RAISE_QUANTILES)
    lifted.check_restored_state()  # the raise tallies sit beside the confidence ones


def test_the_raise_test_has_a_margin_of_its_own_for_a_skewed_honest_client() -> None:
    """An honest client whose share under the highest cut falls about 5 points short of the median client's on the
    unlabelled samples, for good (a label-skewed client fell 3.5-4 points short over 16 rounds of the knowledge
    benchmark): with the agreement's margin the raise test screens it once the rounds add up; with its own, never."""
    strict = ConsensusScreen(CLASSES, z=3.0, raise_test=True, raise_margin=MARGIN)
    screen = ConsensusScreen(CLASSES, z=3.0, raise_test=True)
    first_flagged = None
    for round in range(16):
        rng = np.random.default_rng(60 + round)
        unlabelled, reference = _unsure_liars(rng, "one_hot", liars=())
        logits = unlabelled[4][1]
        rows = np.flatnonzero(rng.random(logits.shape[0]) < 0.15)
        ranked = np.argsort(logits[rows], axis=1)
        logits[rows, ranked[:, -2]] = logits[rows, ranked[:, -1]] - 0.1
        if 4 in strict.screen(unlabelled, reference)[0] and first_flagged is None:
            first_flagged = round
        assert screen.screen(unlabelled, reference)[0] == set()
    assert first_flagged is not None and first_flagged >= 4, first_flagged
    assert screen.raise_margin == RAISE_MARGIN > MARGIN and max(screen.family_scores["raise"].values()) < 3.0


def test_the_raise_tallies_survive_a_checkpoint() -> None:
    def build() -> SelectiveDistillServer:
        return learned_trust_server(60, consensus_z=3.0, consensus_raise=True)

    server = build()
    server.distill(1, _answers(server))
    resumed = resumed_from_checkpoint(server, build)
    saved, loaded = server.options.consensus, resumed.options.consensus
    assert saved is not None and loaded is not None and saved.num_tests == 1 + len(RAISE_QUANTILES)
    assert loaded.confidence_tallies == saved.confidence_tallies and len(saved.confidence_tallies[4]) == len(
        RAISE_QUANTILES
    )
    after = server.distill(2, _answers(server)).extra
    assert after == resumed.distill(2, _answers(resumed)).extra and "consensus_z_raise" in after
