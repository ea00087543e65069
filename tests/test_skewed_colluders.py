"""``adversary=skewed_colluders``: colluders that keep their honest top class and lift another one only as far as the
consensus screen's raise test lets them (the attacker that knows that test)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl_kd.kd import protocol as kd
from fl_kd.kd.adversary import ADVERSARIES, SkewCollusionServer
from fl_kd.kd.adversary.camouflage import SKEW_GAP
from fl_kd.kd.adversary.config import AdversaryConfig
from fl_kd.kd.adversary.skewed_colluders import bounded_lifts, traded_lifts
from fl_kd.kd.agreement import raise_amounts, raise_counts
from fl_kd.kd.consensus import ConsensusScreen, shortfall
from fl_kd.kd.roles import Arrays, Instruction, ServerRole
from fl_kd.kd.runner import run_inprocess
from fl_kd.kd.training import from_wire, to_wire
from tests.kd_configs import tiny_config
from tests.test_consensus_screen import CLASSES, _skewed, _unsure_liars

COLLUDERS = (1, 3, 7)
LABELLED = 200


def _round(seed: int) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Ten honest clients of the consensus screen's tests: their unlabelled answers (positions from
    :data:`LABELLED` on) and their answers on the reference (positions below it)."""
    unlabelled, reference = _unsure_liars(np.random.default_rng(seed), "one_hot", liars=())
    return {c: (pos + LABELLED, logits) for c, (pos, logits) in unlabelled.items()}, reference


def _pooled(unlabelled: Mapping[int, Any], reference: Mapping[int, Any]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The colluders' honest answers, both parts in one array each, as they pool them."""
    return {
        c: (np.concatenate([reference[c][0], unlabelled[c][0]]), np.concatenate([reference[c][1], unlabelled[c][1]]))
        for c in COLLUDERS
    }


def test_a_colluder_keeps_its_top_class_and_lifts_one_class_only_where_no_label_checks_it() -> None:
    unlabelled, reference = _round(20)
    honest = _pooled(unlabelled, reference)
    lied = bounded_lifts(honest, LABELLED, CLASSES)
    assert set(lied) == set(COLLUDERS)
    for c in COLLUDERS:
        before, after = honest[c][1], lied[c]
        np.testing.assert_array_equal(after[:LABELLED], before[:LABELLED])
        np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
        changed = ~np.isclose(after, before)
        assert np.all(changed.sum(axis=1) <= 1) and np.all(after >= before - 1e-12)  # one class, never lowered
        rows = np.flatnonzero(changed.any(axis=1))
        assert rows.size > 0.5 * (before.shape[0] - LABELLED)
        top, lifted = before.argmax(axis=1)[rows], changed[rows].argmax(axis=1)
        assert np.all(after[rows, lifted] <= after[rows, top] - SKEW_GAP + 1e-9)  # no higher than under its top
    # Without two other colluders to estimate the others' mean from, nobody lies.
    alone = {c: honest[c] for c in COLLUDERS[:2]}
    for c, logits in bounded_lifts(alone, LABELLED, CLASSES).items():
        np.testing.assert_array_equal(logits, alone[c][1])


def test_the_raise_tests_lower_cuts_see_colluders_that_lift_up_to_its_highest() -> None:
    """Under the highest cut (0.8) the colluders keep about their share of answers; their lifts move up from below
    it, so the lower cuts keep fewer of them, and the four cuts together screen all three from round 2 on (in round 1,
    with 200 answers where checked, the raise test's margin leaves them at z 2.5-2.6; with the agreement's margin
    they were out at once), while the skewed liar that lifts everywhere is screened in every round."""
    bounded = ConsensusScreen(CLASSES, z=3.0, confidence_test=True, raise_test=True)
    skewed = ConsensusScreen(CLASSES, z=3.0, confidence_test=True, raise_test=True)
    lowest, highest = [], []
    for round in range(3):
        unlabelled, reference = _round(20 + round)
        lied = bounded_lifts(_pooled(unlabelled, reference), LABELLED, CLASSES, margin_z=2.0)
        answers = {**unlabelled, **{c: (unlabelled[c][0], lied[c][LABELLED:]) for c in COLLUDERS}}
        flagged, _ = bounded.screen(answers, reference)
        assert flagged == set(COLLUDERS) if round else flagged <= set(COLLUDERS)
        assert min(bounded.family_scores["raise"][c] for c in COLLUDERS) > (4.0 if round else 2.0)
        assert max(z for c, z in bounded.family_scores["raise"].items() if c not in COLLUDERS) < 3.0
        elsewhere, checked = raise_amounts(answers, CLASSES), raise_amounts(reference, CLASSES)
        for c in COLLUDERS:
            cuts = raise_counts(checked[c], elsewhere[c])
            lowest.append(shortfall(cuts[0]))
            highest.append(shortfall(cuts[-1]))
        _skewed(unlabelled, COLLUDERS, seed=round)
        assert skewed.screen(unlabelled, reference)[0] == set(COLLUDERS)
    assert np.mean(lowest) > np.mean(highest) + 0.03


def test_the_trader_lifts_freely_where_the_colluders_are_least_sure_and_keeps_every_cuts_share() -> None:
    """``poison_where=uncertain``: on a fifth of its answers, those where the pooled answers are least sure, the
    lifted class sits just under the top; elsewhere it gives up lift. No cut of the raise test keeps fewer of its
    answers than where checked, so the raise test passes all three colluders in every round."""
    screen = ConsensusScreen(CLASSES, z=3.0, raise_test=True)
    for round in range(3):
        unlabelled, reference = _round(20 + round)
        honest = _pooled(unlabelled, reference)
        lied = traded_lifts(honest, LABELLED, CLASSES, share=0.2, margin_z=0.0)
        answers = {**unlabelled, **{c: (unlabelled[c][0], lied[c][LABELLED:]) for c in COLLUDERS}}
        assert screen.screen(answers, reference)[0] == set()
        assert max(screen.family_scores["raise"][c] for c in COLLUDERS) < 3.0
        elsewhere, checked = raise_amounts(answers, CLASSES), raise_amounts(reference, CLASSES)
        for c in COLLUDERS:
            before, after = honest[c][1][LABELLED:], lied[c][LABELLED:]
            np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
            np.testing.assert_array_equal(lied[c][:LABELLED], honest[c][1][:LABELLED])
            ranked = np.sort(after, axis=1)
            close = ranked[:, -1] - ranked[:, -2] <= SKEW_GAP + 1e-9
            assert 0.15 < close.mean() < 0.35  # its fifth, beside honest answers that were that close already
            assert all(shortfall(cut) < 0.02 for cut in raise_counts(checked[c], elsewhere[c]))


def test_the_trader_that_knows_the_confidence_test_keeps_what_each_answer_states() -> None:
    """``lie_as=swap``: the answers on which the trader gives up lift hand the probability taken to its other
    classes, not to its top, wherever their caps leave room, so few answers state themselves surer than its honest
    ones did (about a fifth as many as the trader that sharpens); it still passes the raise test, and the confidence
    test too."""
    screen = ConsensusScreen(CLASSES, z=3.0, confidence_test=True, raise_test=True)
    for round in range(3):
        unlabelled, reference = _round(20 + round)
        honest = _pooled(unlabelled, reference)
        sharpened = traded_lifts(honest, LABELLED, CLASSES, share=0.2, margin_z=0.0)
        kept = traded_lifts(honest, LABELLED, CLASSES, share=0.2, margin_z=0.0, keep_confidence=True)
        answers = {**unlabelled, **{c: (unlabelled[c][0], kept[c][LABELLED:]) for c in COLLUDERS}}
        assert screen.screen(answers, reference)[0] == set()
        assert max(screen.family_scores["confidence"][c] for c in COLLUDERS) < 3.0
        for c in COLLUDERS:
            before = torch.softmax(torch.from_numpy(honest[c][1][LABELLED:]), dim=1).max(dim=1).values.numpy()
            after = torch.softmax(torch.from_numpy(kept[c][LABELLED:]), dim=1).max(dim=1).values.numpy()
            surer = torch.softmax(torch.from_numpy(sharpened[c][LABELLED:]), dim=1).max(dim=1).values.numpy()
            np.testing.assert_array_equal(kept[c].argmax(axis=1), honest[c][1].argmax(axis=1))
            kept_surer, sharpened_surer = np.mean(after > before + 1e-6), np.mean(surer > before + 1e-6)
            assert sharpened_surer > 0.5 and kept_surer < 0.3 and kept_surer < 0.4 * sharpened_surer
            assert np.mean(np.isclose(after, before, atol=1e-9)) > 0.5  # most state just what they stated honestly


def test_skewed_colluders_read_lie_as_only_in_the_trader() -> None:
    behaviour = ADVERSARIES.get("skewed_colluders")
    experiment = tiny_config()
    trader = AdversaryConfig(name="skewed_colluders", poison_where="uncertain", poison_share=0.2, lie_as="swap")
    assert "lie_as" not in behaviour.unread(trader, experiment)
    for config in (
        AdversaryConfig(name="skewed_colluders", lie_as="swap"),
        AdversaryConfig(name="skewed_colluders", poison_where="uncertain", poison_share=0.2, lie_as="quantile"),
    ):
        assert "lie_as" in behaviour.unread(config, experiment)


class _Recorder(ServerRole):
    """A server half that asks every client the positions 0-5 and records what it is given to aggregate."""

    def __init__(self) -> None:
        self.aggregated: dict[int, Arrays] = {}

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        return Instruction({kd.POSITIONS: np.arange(6, dtype=np.int64)})

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        return None

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        self.aggregated = dict(answers)
        return {}

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        return Instruction()

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        return 0.0


def test_the_server_side_channel_rewrites_only_the_colluders_answers_in_their_wire_format() -> None:
    """Positions 0-1 are labelled, 2-5 are not; the answers do not repeat their positions (the query's stand)."""
    rng = np.random.default_rng(3)
    honest = {c: to_wire(torch.from_numpy(rng.normal(size=(6, 4)) * 2), np.uint8) for c in range(6)}
    recorder = _Recorder()
    lie = functools.partial(bounded_lifts, num_classes=4)
    server = SkewCollusionServer(recorder, frozenset({0, 2, 4}), num_classes=4, labelled=2, lie=lie)
    server.aggregate(1, {c: {kd.LOGITS: wire} for c, wire in honest.items()})
    for c, arrays in recorder.aggregated.items():
        sent = arrays[kd.LOGITS]
        assert sent.dtype == np.uint8 and sent.shape == (6, 4)
        if c % 2:
            np.testing.assert_array_equal(sent, honest[c])
            continue
        before, after = from_wire(honest[c]), from_wire(sent)
        np.testing.assert_array_equal(after[:2], before[:2])
        np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_a_federation_with_skewed_colluders_runs_and_reports_who_was_screened() -> None:
    """The colluders' clients answer honestly and the server half rewrites their answers: the raise test reads
    other answers than in the honest federation of the same seed."""
    runs = {}
    for name, fraction in (("none", 0.0), ("skewed_colluders", 0.5)):
        cfg = tiny_config(
            num_clients=6,
            transfer={"labelled": 60, "unlabelled": 120},
            adversary={"name": name, "fraction": fraction},
            consensus_z=3.0,
            consensus_raise=True,
            unlabelled_trust="learned",
            reliability_on="held_out",
            correctness="held_out",
        )
        runs[name] = run_inprocess(cfg).rounds
    assert [row["round"] for row in runs["skewed_colluders"]] == [1, 2]
    assert all("n_malicious_screened" in row for row in runs["skewed_colluders"])
    raised = {name: [row["consensus_z_raise"] for row in rounds] for name, rounds in runs.items()}
    assert raised["none"] != raised["skewed_colluders"]
