"""A label-free screen: clients that agree with the others less where no label checks them than where one does.

A trust score measured on labelled answers rates a client by the samples it knows are labelled, so a client that
knows the defence answers those honestly and poisons the unlabelled ones (``adversary=camouflage``). Canaries
(:mod:`fl_kd.kd.fedgems.canaries`) catch it with hidden labels, at the price of more labels and with the power of
the few canaries a round asks. This screen needs no label: on every sample, a client's answer is compared with the
plurality vote of the *other* clients' answers. Its agreement on the unlabelled samples asked this round is
compared with its agreement on the *reference*: labelled samples, where a client knows it is checked (FedGEMS'
reliability slice, the held-out labelled samples; the labelled public part for the logit-sharing peers, FedMD and
DS-FL). The vote there is that of the other clients too, and no label is read. An honest client agrees about as
often on both, up to what all honest clients share; one that poisons a share ``p`` of its unlabelled answers
agrees less there by about ``p`` times its agreement. Each round asks thousands of unlabelled samples, so the test
sees far more than the canaries do.

The two slices are not treated alike by everybody (FedGEMS' clients distil the server's logits on the labelled part
every round, on a subset of the unlabelled part; FedMD's train on the public labels first), so every honest client
may agree a little less on the unlabelled part. The screen therefore measures each client's shortfall against the
median client's, which an honest majority sets, and leaves out of the unlabelled teacher (the peers: out of the
round's fusion) a client whose excess beyond ``margin`` exceeds ``z`` standard errors,
pooled over rounds. How much less differs between honest clients too, by a point or two that never goes away (on
the knowledge benchmark, 1.6 points of agreement for one honest client after 7 rounds), while the pooled standard
error shrinks; without the margin such a client crosses ``z`` in a long enough run. In a long run the difference
can also grow: clients learn the vote on the unlabelled samples they distil, a label-skewed client keeps less of it,
and each round more of the samples asked have been distilled before (BENCHMARKS_KD.md measures it).

Pooling over rounds is what gives the test its power against a client that lies every round, and what dilutes one
that answers honestly for rounds and then lies (``adversary.from_round``). With ``burst_z`` every test also runs on
every window of the latest rounds (the last one, the last two, ...), the median client's shortfall taken in the
same window, and screens a client whose excess in any window exceeds ``burst_z`` standard errors.

What it cannot do: an attacker that poisons a small enough share stays below the test's power, and one that lies
on the reference as often as elsewhere is not screened, but then a trust measured there rates it as the weaker
client it makes itself. One that lies only where it is least sure, naming its runner-up class, hides
its lies among the honest clients' own disagreements there, and those are the samples whose teacher a lie turns
most easily (``adversary.poison_where=uncertain``; BENCHMARKS_KD.md measures each). The confidence test
(``confidence_test``) catches that liar when it states its lies surer than its honest answers there were: its
least sure answers then move up among its surer ones, and if it trades stated confidences between rows so that
their spread stays its honest one, its answers stated sure agree with the others less than where it is checked.
One that keeps its honest answer's low confidence passes both tests, and a fusion that weighs stated confidence
gives such a lie little. For that reason the agreement per band is only tested in the bands a client states itself
surer in (:data:`SURE_BANDS`): in the two least sure, an honest client's agreement where it was taught (FedGEMS'
reliability slice, distilled every round) and where it was not differs by up to 20 points, client by client, and
there the test screened honest clients (two in 8 rounds of the knowledge benchmark, one in 3 rounds of the
robustness benchmark's; BENCHMARKS_KD.md). Colluders above half of the clients set the vote and the median.

Every test above reads the class a client names. One that names its honest class and lifts another class to just
under it (``adversary.lie_as=skewed``) passes them all, while in a product of experts the lifted class counts
wherever the honest clients are unsure. The raise test (``raise_test``) compares how far a client's answers lift a
class above the other clients' mean log-probability where it is checked and elsewhere, at four quantiles of its
lifts where checked: colluders that lift every answer up to the highest cut, and no further, move their lifts up
from below it (``adversary=skewed_colluders``; with the highest cut alone they passed). Colluders that lift freely
on a fifth of their answers, where they are least sure together, and give up lift on the rest keep every cut's
share and pass it (``adversary.poison_where=uncertain``); on Fashion-MNIST their lifts turn little of the teacher
(BENCHMARKS_KD.md measures both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from fl_kd.kd.agreement import (
    RAISE_QUANTILES,
    SURE_QUANTILES,
    Answers,
    agreement_rows,
    confidence_strata,
    raise_amounts,
    raise_counts,
    unsure_counts,
)

SURE_BANDS = (2, 3, 4)
"""The strata of :func:`confidence_strata` whose agreement the confidence test compares: a client's answers stated
at least as sure as the 40% quantile of its answers where checked. Below, honest agreement varies too much to test
(module docstring), and a lie stated that unsure carries little weight in the fused teacher."""

MARGIN = 0.02
"""The shortfall beyond the median client's that no amount of evidence makes a client a suspect: honest clients
differ by about this much for good (module docstring); a liar that poisons a fifth of its answers, by several
times it."""

RAISE_MARGIN = 0.05
""":data:`MARGIN` of the raise test: an honest label-skewed client's share under a cut stayed about 3.5-4 points
beyond the median client's from round 8 to 16 of the knowledge benchmark, and with 0.02 the four cuts left it out in
round 16; colluders aiming 6 standard errors under the cuts still reach z 11.9 in round 1 (BENCHMARKS_KD.md)."""


def shortfall(tally: Sequence[int]) -> float:
    """Agreement on the reference minus agreement on the unlabelled answers (both counted must be positive)."""
    ref_agreed, ref_counted, unl_agreed, unl_counted = tally
    return ref_agreed / ref_counted - unl_agreed / unl_counted


def standard_error(tally: Sequence[int]) -> float:
    """Standard error of :func:`shortfall` (two independent proportions); each variance is floored at that of one
    disagreement, so that a slice agreeing everywhere does not claim certainty."""
    ref_agreed, ref_counted, unl_agreed, unl_counted = tally
    variance = 0.0
    for agreed, counted in ((ref_agreed, ref_counted), (unl_agreed, unl_counted)):
        p = agreed / counted
        variance += max(p * (1.0 - p), 1.0 / counted) / counted
    return math.sqrt(variance)


class ConsensusScreen:
    """Each client's running agreement with the other clients, on the reference and on the unlabelled part.

    Parameters
    ----------
    num_classes : int
        Number of classes C.
    z : float
        A client whose shortfall exceeds the median client's by ``margin`` and more than ``z`` standard errors on
        top is screened out.
    confidence_test : bool (default: False)
        Also compare how sure a client says it is on both, and how often it agrees where it says so: at each cut of
        :data:`SURE_QUANTILES`, the share of its unlabelled answers stated less sure than that quantile of its
        answers on the reference (:func:`unsure_counts`), and within each stratum of :data:`SURE_BANDS`
        (:func:`confidence_strata`) its agreement, each tested as the agreement is; the seven count as one test
        (:func:`family_z`). A liar that lies only where it is least sure hides its lies among the honest clients'
        own disagreements, but a lie stated surer than its honest answer moves its least sure answers up, and a lie
        stated sure disagrees where sure answers agree.
    margin : float (default: :data:`MARGIN`)
        The excess over the median client's shortfall that is not evidence, in every test.
    burst_z : float (default: 0.0)
        Also screen a client whose excess in a test on a window of its latest rounds, shorter than all of them,
        exceeds ``burst_z`` standard errors, the confidence tests corrected together as in the pooled test (0: off;
        the family ``"burst"`` of :attr:`family_scores`).
    raise_test : bool (default: False)
        Also compare how far a client lifts a class beside its own top class above the others' mean
        log-probability (:func:`raise_amounts`) on both: at each cut of :data:`~fl_kd.kd.agreement.RAISE_QUANTILES`,
        the share of its unlabelled answers that lift no higher than that quantile of its lifts on the reference,
        each tested as the agreement is (:func:`raise_counts`); the four count as one test (the family ``"raise"``).
        A liar that names its honest class and lifts another one near it passes every test of the class it names,
        and in a product of experts its lifted class still counts.
    raise_margin : float (default: :data:`RAISE_MARGIN`)
        ``margin`` of the raise test, whose honest differences are larger.
    """

    max_passes = 4
    """Passes of the screen per round at most; the verdict usually settles after two."""

    def __init__(
        self,
        num_classes: int,
        z: float,
        confidence_test: bool = False,
        margin: float = MARGIN,
        burst_z: float = 0.0,
        raise_test: bool = False,
        raise_margin: float = RAISE_MARGIN,
    ) -> None:
        if z <= 0 or burst_z < 0:
            raise ValueError(f"z must be > 0 and burst_z >= 0, got {z} and {burst_z}")
        if not (0.0 <= margin < 1.0 and 0.0 <= raise_margin < 1.0):
            raise ValueError(f"margin and raise_margin must lie in [0, 1), got {margin} and {raise_margin}")
        if num_classes < 2:
            raise ValueError(f"the consensus screen needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.z = z
        self.confidence_test = confidence_test
        self.raise_test = raise_test
        self.margin = margin
        self.raise_margin = raise_margin
        self.burst_z = burst_z
        # client id -> its counts of each test in each round it answered in, oldest first (for the burst test)
        self.rounds: dict[int, list[list[tuple[int, ...]]]] = {}
        # client id -> [reference agreed, reference counted, unlabelled agreed, unlabelled counted], over rounds
        self.tallies: dict[int, list[int]] = {}
        # client id -> with confidence_test, per cut [reference unsure, counted, unlabelled unsure, counted], then per
        # stratum of SURE_BANDS its agreement tally; then, with raise_test, its raise_counts per cut
        self.confidence_tallies: dict[int, list[list[int]]] = {}
        self.flagged: list[int] = []  # the last round's verdict, where the next round's vote starts
        # the last round's z per family of tests ("agreement"; with confidence_test also "confidence", the seven
        # corrected together) and client, so that a run can tell which test screened whom
        self.family_scores: dict[str, dict[int, float]] = {}

    def screen(self, unlabelled: Answers, reference: Answers) -> tuple[set[int], dict[int, float]]:
        """Add this round's answers to the tallies; the clients screened out, and every answering client's z (the
        largest of its tests').

        The vote leaves out the clients screened out: liars that answer the truth where labels check them would
        otherwise swell the vote there, and honest clients that agree with it most would seem to fall short
        elsewhere. So the screen starts from the last round's verdict and repeats until it no longer changes
        (at most :attr:`max_passes` times; without a fixed point, only the clients the last two passes screen out
        are); the tallies take the last pass's counts.

        Parameters
        ----------
        unlabelled : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (unlabelled indices ``(n,)``, logits ``(n, C)``) of this round.
        reference : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (positions ``(m,)``, logits ``(m, C)``) on the reference this round.
        """
        flagged, previous = set(self.flagged) & set(unlabelled), None
        strata = self._strata(unlabelled, reference)  # who votes does not change what a client states
        for _ in range(self.max_passes):
            now = self._counts(unlabelled, reference, set(unlabelled) - flagged, strata)
            verdict, scores = self._verdict(now)
            if verdict == flagged:
                break
            previous, flagged = flagged, verdict
        else:  # no fixed point: only the clients the last two passes agree on
            verdict = verdict & (previous if previous is not None else verdict)
        for client_id, counts in now.items():
            for tally, add in zip(self._stored(client_id, create=True), counts, strict=True):
                for k, count in enumerate(add):
                    tally[k] += count
            if self.burst_z:
                self.rounds.setdefault(client_id, []).append(list(counts))
        self.flagged = sorted(verdict)
        return verdict, scores

    def check_restored_state(self) -> None:
        """Raise ``ValueError`` unless every client's tallies have this screen's shape: a run resumed from a
        checkpoint of another version of the screen (another number of tests) must stop there, not at its first
        screen."""
        expected = self.num_tests - 1
        for client_id, tally in self.tallies.items():
            if len(tally) != 4:
                raise ValueError(f"client {client_id}'s agreement tally has {len(tally)} counts, not 4")
        for client_id, rounds in self.rounds.items():
            if any(len(counts) != self.num_tests or any(len(tally) != 4 for tally in counts) for counts in rounds):
                raise ValueError(f"a round's counts of client {client_id} are not {self.num_tests} tallies of 4")
        for client_id, tallies in self.confidence_tallies.items():
            if len(tallies) != expected:
                raise ValueError(
                    f"client {client_id} has {len(tallies)} confidence tallies, this screen keeps {expected} "
                    "(a checkpoint of another version of the confidence test)"
                )
            if any(len(tally) != 4 for tally in tallies):
                raise ValueError(f"a confidence tally of client {client_id} does not have 4 counts")

    def _stored(self, client_id: int, create: bool = False) -> list[list[int]]:
        """A client's pooled tallies: its agreement, then (``confidence_test``) one per confidence cut and one of
        agreement per stratum of :data:`SURE_BANDS`, then (``raise_test``) its :func:`raise_counts`."""
        extra = [[0, 0, 0, 0] for _ in range(self.num_tests - 1)]
        if create:
            self.tallies.setdefault(client_id, [0, 0, 0, 0])
            if self.num_tests > 1:
                self.confidence_tallies.setdefault(client_id, extra)
        agreement = self.tallies.get(client_id, [0, 0, 0, 0])
        return [agreement, *self.confidence_tallies.get(client_id, extra)]

    @property
    def num_tests(self) -> int:
        """Tests per client: agreement; with ``confidence_test`` also one per cut and one per tested stratum; with
        ``raise_test`` one per cut of :data:`~fl_kd.kd.agreement.RAISE_QUANTILES`."""
        return (
            1 + (self._confidence_tests if self.confidence_test else 0) + (self._raise_tests if self.raise_test else 0)
        )

    _confidence_tests = len(SURE_QUANTILES) + len(SURE_BANDS)
    _raise_tests = len(RAISE_QUANTILES)

    def _family(self, test: int) -> str:
        """The family of test number ``test`` (:meth:`_stored`'s order)."""
        if test == 0:
            return "agreement"
        return "raise" if self.raise_test and test >= self.num_tests - self._raise_tests else "confidence"

    def _corrected(self, test: int, z: float) -> float:
        """Test ``test``'s z as a member of its family: the confidence tests count as one, and so do the raise tests
        (:func:`family_z`)."""
        family = self._family(test)
        if family == "agreement":
            return z
        return family_z(z, self._confidence_tests if family == "confidence" else self._raise_tests)

    def _strata(
        self, unlabelled: Answers, reference: Answers
    ) -> dict[int, tuple[NDArray[np.int64], NDArray[np.int64]]]:
        """Per client, the :func:`confidence_strata` of its reference and unlabelled answers (none without
        ``confidence_test``)."""
        if not self.confidence_test:
            return {}
        out = {}
        for client_id in unlabelled:
            own = np.asarray(reference[client_id][1]) if client_id in reference else np.zeros((0, self.num_classes))
            out[client_id] = (confidence_strata(own, own), confidence_strata(own, np.asarray(unlabelled[client_id][1])))
        return out

    def _counts(
        self,
        unlabelled: Answers,
        reference: Answers,
        voters: set[int],
        strata: Mapping[int, tuple[NDArray[np.int64], NDArray[np.int64]]] | None = None,
    ) -> dict[int, list[tuple[int, ...]]]:
        """This round's (reference agreed, counted, unlabelled agreed, counted) per client against ``voters``, then
        (``confidence_test``) its :func:`unsure_counts` and its agreement tallies per stratum of ``strata``
        (:meth:`_strata`, computed when not given), then (``raise_test``) its :func:`raise_counts`."""
        if strata is None:
            strata = self._strata(unlabelled, reference)
        on_unlabelled = agreement_rows(unlabelled, self.num_classes, voters)
        on_reference = agreement_rows(reference, self.num_classes, voters)
        none = (np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
        out: dict[int, list[tuple[int, ...]]] = {}
        for client_id in unlabelled:
            (ref_agreed, ref_counted), (unl_agreed, unl_counted) = (
                on_reference.get(client_id, none),
                on_unlabelled[client_id],
            )
            out[client_id] = [
                (int(ref_agreed.sum()), int(ref_counted.sum()), int(unl_agreed.sum()), int(unl_counted.sum()))
            ]
            if self.confidence_test:
                ref_strata, unl_strata = strata[client_id]
                out[client_id] += unsure_counts(ref_strata, unl_strata)
                for stratum in SURE_BANDS:
                    ref, unl = ref_strata == stratum, unl_strata == stratum
                    out[client_id].append(
                        (
                            int(ref_agreed[ref].sum()),
                            int(ref_counted[ref].sum()),
                            int(unl_agreed[unl].sum()),
                            int(unl_counted[unl].sum()),
                        )
                    )
        if self.raise_test:
            lifts, reference_lifts = (raise_amounts(part, self.num_classes, voters) for part in (unlabelled, reference))
            no_rows = (np.zeros(0), np.zeros(0, dtype=bool))
            for client_id in unlabelled:
                out[client_id] += raise_counts(reference_lifts.get(client_id, no_rows), lifts[client_id])
        return out

    def _verdict(self, now: Mapping[int, list[tuple[int, ...]]]) -> tuple[set[int], dict[int, float]]:
        """The clients whose pooled tallies, this round's ``now`` added, fall short beyond ``margin`` and ``z`` in
        some test; and every client's largest z (each family's in :attr:`family_scores`)."""
        families = {self._family(test): {c: -math.inf for c in now} for test in range(self.num_tests)}
        for test in range(self.num_tests):
            family = families[self._family(test)]
            pooled = {
                c: [a + b for a, b in zip(self._stored(c)[test], counts[test], strict=True)]
                for c, counts in now.items()
            }
            for client_id, z in self._excess_z(pooled, self._margin(test)).items():
                family[client_id] = max(family[client_id], self._corrected(test, z))
        scores = {c: _finite(max(family[c] for family in families.values())) for c in now}
        verdict = {c for c in scores if scores[c] > self.z}
        if self.burst_z:
            families["burst"] = self._burst_scores(now)
            verdict |= {c for c, z in families["burst"].items() if z > self.burst_z}
        self.family_scores = {name: {c: _finite(z) for c, z in family.items()} for name, family in families.items()}
        return verdict, scores

    def _burst_scores(self, now: Mapping[int, list[tuple[int, ...]]]) -> dict[int, float]:
        """Every client's largest z over its tests on the windows of its latest rounds, this round's ``now`` the
        last, that leave out at least its first round; each window's median shortfall is taken over the clients
        that answered in that many rounds."""
        best = {c: -math.inf for c in now}
        history = {c: self.rounds.get(c, []) for c in now}
        for earlier in range(max((len(rounds) for rounds in history.values()), default=0)):
            for test in range(self.num_tests):
                window = {  # this round and the ``earlier`` rounds before it, of the clients with a round more
                    c: [
                        sum(column)
                        for column in zip(
                            counts[test], *(past[test] for past in history[c][len(history[c]) - earlier :]), strict=True
                        )
                    ]
                    for c, counts in now.items()
                    if len(history[c]) > earlier
                }
                for client_id, z in self._excess_z(window, self._margin(test)).items():
                    best[client_id] = max(best[client_id], self._corrected(test, z))
        return best

    def _margin(self, test: int) -> float:
        """The margin of test number ``test``: ``raise_margin`` for the raise tests, else ``margin``."""
        return self.raise_margin if self._family(test) == "raise" else self.margin

    def _excess_z(self, tallies: Mapping[int, Sequence[int]], margin: float) -> dict[int, float]:
        """Per client with evidence on both parts, its shortfall's excess over the median client's and ``margin``,
        in standard errors."""
        evidenced = [c for c in sorted(tallies) if tallies[c][1] > 0 and tallies[c][3] > 0]
        if not evidenced:
            return {}
        median = float(np.median([shortfall(tallies[c]) for c in evidenced]))
        return {c: (shortfall(tallies[c]) - median - margin) / standard_error(tallies[c]) for c in evidenced}


def _finite(z: float) -> float:
    """A client no test had evidence on scores 0."""
    return 0.0 if z == -math.inf else z


def family_z(z: float, tests: int) -> float:
    """The z of one test among ``tests`` as the z of a single test that alarms as often (Bonferroni): the largest of
    several honest z's exceeds a threshold more often than one does, so the confidence test's seven tests, taken
    together, screen an honest client no more often than the agreement test alone."""
    tail = tests * 0.5 * math.erfc(z / math.sqrt(2.0))
    if tail >= 0.5:
        return min(z, 0.0)
    return z if tail == 0.0 else -NormalDist().inv_cdf(tail)
