"""``strategy.unlabelled_trust=learned``: a per-client, per-class combiner fitted on the held-out slice
(fl_kd.kd.fedgems.combiner) recovers planted expertise, is deterministic, handles missing answers, is refused
without a clean slice, and runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_kd.config import ConfigError
from fl_kd.kd.fedgems import FedGEMSServer, ServerDistillConfig
from fl_kd.kd.fedgems.combiner import ClassCombiner, fit_class_combiner, fuse_by_combiner
from fl_kd.kd.fedgems.reliability import class_precision, confusion_matrix, fuse_by_reliability
from fl_kd.kd.runner import run_inprocess
from tests.kd_configs import learned_trust_server, tiny_config

C = 10


def _experts(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2, n, C)`` logits of two experts and the ``(n,)`` truth: client 0 knows classes 0..4 (its logits there
    carry the label, softly), client 1 knows 5..9; on the other classes each is loud noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=generator)
    clients = []
    for low in (0, 5):
        own = torch.zeros(C, dtype=torch.bool)
        own[low : low + 5] = True
        logits = torch.randn(n, C, generator=generator) * torch.where(own, 0.5, 2.0)
        logits[torch.arange(n), labels] += 3.0 * own[labels]
        clients.append(logits)
    return torch.stack(clients), labels


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean())


def test_the_learned_teacher_recovers_planted_expertise() -> None:
    fit_logits, fit_labels = _experts(200, seed=0)
    test_logits, test_labels = _experts(1000, seed=1)
    fit_available = torch.ones(2, 200, dtype=torch.bool)
    available = torch.ones(2, 1000, dtype=torch.bool)
    combiner = fit_class_combiner(fit_logits, fit_available, fit_labels, weight_decay=1e-3)
    learned = _accuracy(fuse_by_combiner(test_logits, available, combiner).logits, test_labels)
    mean = _accuracy(F.softmax(test_logits, dim=-1).mean(dim=0), test_labels)
    precision = torch.stack([class_precision(confusion_matrix(fit_logits[k], fit_labels, C)) for k in range(2)])
    reliability = _accuracy(fuse_by_reliability(test_logits, available, precision).logits, test_labels)
    assert learned > 0.85 and learned > mean + 0.2 and learned > reliability + 0.1
    # Each client is trusted on its own classes and hardly on the others.
    assert combiner.weight[0, :5].min() > 1.5 > 0.7 > combiner.weight[0, 5:].abs().max()
    assert combiner.weight[1, 5:].min() > 1.5 > 0.7 > combiner.weight[1, :5].abs().max()
    assert 0.0 < combiner.loss < 0.5


def test_the_fit_is_deterministic_and_starts_from_the_product() -> None:
    logits, labels = _experts(120, seed=2)
    available = torch.rand(2, 120, generator=torch.Generator().manual_seed(3)) > 0.2
    first = fit_class_combiner(logits, available, labels)
    second = fit_class_combiner(logits.clone(), available.clone(), labels.clone())
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.loss == second.loss
    empty = fit_class_combiner(torch.zeros(2, 0, C), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(0))
    assert torch.equal(empty.weight, torch.ones(2, C)) and torch.equal(empty.bias, torch.zeros(C))
    assert np.isnan(empty.loss)
    # A huge weight decay pins w to 1: the unweighted product of the clients' distributions.
    pinned = fit_class_combiner(logits, available, labels, weight_decay=1e6)
    assert torch.allclose(pinned.weight, torch.ones(2, C), atol=1e-3)


def test_missing_answers_count_as_uniform_and_nobody_means_no_teacher() -> None:
    logits, labels = _experts(60, seed=4)
    combiner = fit_class_combiner(logits, torch.ones(2, 60, dtype=torch.bool), labels)
    available = torch.ones(2, 60, dtype=torch.bool)
    available[1, :20] = False  # client 1 silent on the first 20
    available[:, 50:] = False  # nobody answered the last 10
    garbage = logits.clone()
    garbage[~available] = float("nan")
    fused = fuse_by_combiner(garbage, available, combiner)
    assert torch.isfinite(fused.logits).all()
    assert fused.has_teacher.tolist() == [True] * 50 + [False] * 10
    assert (fused.logits[50:] == 0).all() and (fused.weights[:, 50:] == 0).all()
    assert (fused.weights[1, :20] == 0).all() and torch.allclose(fused.weights[0, :20], torch.ones(20))
    assert torch.allclose(fused.weights[:, :50].sum(dim=0), torch.ones(50))
    # Silent means uniform: the same as client 1 answering all-equal logits there.
    uniform = logits.clone()
    uniform[1, :20] = 0.0
    spoken = fuse_by_combiner(uniform, torch.ones(2, 60, dtype=torch.bool), combiner)
    assert torch.allclose(fused.logits[:20], spoken.logits[:20], atol=1e-5)
    torch.testing.assert_close(fused.logits[:50].exp().sum(dim=1), torch.ones(50))  # log-probabilities


def test_learned_trust_is_refused_without_a_slice_no_client_trained_on() -> None:
    with pytest.raises(ConfigError, match="unlabelled_trust=learned needs strategy.reliability_on=held_out"):
        tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="learned")
    with pytest.raises(ConfigError, match="reliability_on=held_out"):
        tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="learned", correctness="held_out")
    with pytest.raises(ConfigError, match="learned_weight_decay"):
        tiny_config(learned_weight_decay=-1.0)
    with pytest.raises(ValueError, match="reliability_on=held_out"):
        ServerDistillConfig(unlabelled_trust="learned", correctness="held_out")


def test_the_server_fits_on_the_held_out_slice_and_credits_the_client_that_taught() -> None:
    classes = 4
    server = learned_trust_server(30)
    held = server.options.held_out_positions
    assert server.options.unlabelled_y is not None
    labels = np.concatenate([server.transfer_y.numpy(), server.options.unlabelled_y.numpy()])
    right = np.eye(classes, dtype=np.float32)[labels] * 6
    wrong = np.eye(classes, dtype=np.float32)[(labels + 1) % classes] * 6
    # Client 1 is right on the trained part only (where the labels leak); on the held-out slice and the
    # unlabelled part it is wrong. The combiner must ignore the trained part and trust client 0.
    on_slice = np.isin(np.arange(70), held) | (np.arange(70) >= 40)
    liar = np.where(on_slice[:, None], wrong, right)
    role = FedGEMSServer(server)
    positions = np.arange(70)
    role.aggregate(1, {0: {"positions": positions, "logits": right}, 1: {"positions": positions, "logits": liar}})
    stats = server.distill(2, {0: (positions, right), 1: (positions, liar)})
    assert stats.extra["teacher_unlabelled_accuracy"] == 1.0
    assert stats.extra["combiner_samples"] == held.size and stats.extra["combiner_loss"] < 0.1
    assert stats.extra["n_unlabelled"] == 30
    # The shares add the trained labelled samples (where both are right and share the credit; the held-out slice,
    # where the trust is fitted, is not distilled) to the unlabelled part, where the positive part of
    # w[k, teacher's class] credits client 0 alone.
    shares = role.fusion_weights()
    assert shares[0] > 0.6 > 0.4 > shares[1]


def test_learned_trust_runs_end_to_end_on_digits() -> None:
    cfg = tiny_config(
        rounds=2,
        transfer={"labelled": 60, "unlabelled": 40},
        correctness="held_out",
        held_out_fraction=0.5,
        reliability_on="held_out",
        unlabelled_trust="learned",
    )
    rows = run_inprocess(cfg).rounds
    assert len(rows) == 2
    for row in rows:
        assert row["n_unlabelled"] == 40 and row["combiner_samples"] == 30
        assert 0.0 <= row["teacher_unlabelled_accuracy"] <= 1.0 and np.isfinite(row["combiner_loss"])


def test_a_probability_floor_keeps_one_confident_liar_from_vetoing_the_truth() -> None:
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, C, (300,), generator=generator)
    honest = torch.randn(3, 300, C, generator=generator)
    honest[:, torch.arange(300), labels] += 2.0  # three fairly sure honest clients
    liar = torch.zeros(1, 300, C)
    liar[0, torch.arange(300), (labels + 1) % C] = 10.0  # one-hot on a wrong class, as camouflage lies
    logits, available = torch.cat([honest, liar]), torch.ones(4, 300, dtype=torch.bool)
    ones = ClassCombiner(torch.ones(4, C), torch.zeros(C), 0.0)  # the plain product: what an honest fit starts from
    floored = ClassCombiner(torch.ones(4, C), torch.zeros(C), 0.0, prob_floor=0.01)
    vetoed = _accuracy(fuse_by_combiner(logits, available, ones).logits, labels)
    bounded = _accuracy(fuse_by_combiner(logits, available, floored).logits, labels)
    without_liar = _accuracy(
        fuse_by_combiner(honest, available[:3], ClassCombiner(torch.ones(3, C), torch.zeros(C), 0.0)).logits, labels
    )
    # The liar vetoes the truth almost everywhere in the product; floored, it costs a third of the samples on which
    # three fairly unsure honest clients (a margin of about 2 nats) are outvoted by one firm dissent.
    assert vetoed < 0.1 and bounded > vetoed + 0.5 and without_liar > 0.9
    with pytest.raises(ValueError, match="prob_floor"):
        fit_class_combiner(logits, available, labels, prob_floor=0.2)
    assert fit_class_combiner(logits, available, labels, prob_floor=0.01).prob_floor == 0.01


def test_a_trimmed_product_ignores_as_many_liars_as_it_trims() -> None:
    generator = torch.Generator().manual_seed(6)
    labels = torch.randint(0, C, (300,), generator=generator)
    honest = torch.randn(5, 300, C, generator=generator)
    honest[:, torch.arange(300), labels] += 2.0
    liars = torch.zeros(2, 300, C)
    liars[:, torch.arange(300), (labels + 1) % C] = 10.0
    logits, available = torch.cat([honest, liars]), torch.ones(7, 300, dtype=torch.bool)

    def fused_accuracy(prob_floor: float, trim: int, clients: torch.Tensor = logits) -> float:
        combiner = ClassCombiner(torch.ones(clients.shape[0], C), torch.zeros(C), 0.0, prob_floor, trim)
        return _accuracy(fuse_by_combiner(clients, available[: clients.shape[0]], combiner).logits, labels)

    alone = fused_accuracy(0.01, 0, honest)
    assert fused_accuracy(0.01, 0) < alone - 0.2  # two floored liars still outvote unsure honest clients
    assert fused_accuracy(0.01, 2) > alone - 0.05  # trimmed away, for the truth and for their wrong class
    assert fused_accuracy(0.01, 2, honest) > alone - 0.05  # and trimming costs the honest clients little
    fitted = fit_class_combiner(logits, available, labels, prob_floor=0.01, trim=2)
    assert fitted.trim == 2 and np.isfinite(fitted.loss)
