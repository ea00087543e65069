"""Defences against the adaptive attacker (issue 11, item 2): randomised labels, CoAE with noise, Marvell."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_kd.vfl.defences import (
    CoAEDefence,
    CoAENoiseDefence,
    ConfusionalAutoencoder,
    MarvellDefence,
    RandomisedLabelDefence,
    build_defence,
    train_autoencoder,
)
from fl_kd.vfl.defences.marvell import solve_covariances, sum_kl
from fl_kd.vfl.defences.randomised_label import fake_labels, keep_probability
from fl_kd.vfl.models import SumTop
from fl_kd.vfl.parties import LabelParty


# --- randomised label -------------------------------------------------------------------------------------------------
def test_fake_labels_are_fixed_per_sample_whatever_the_batch() -> None:
    ids = torch.arange(1000)
    labels = ids % 10
    once = fake_labels(7, ids, labels, 10, epsilon=0.5)
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    again = fake_labels(7, ids[shuffled], labels[shuffled], 10, epsilon=0.5)
    assert torch.equal(again, once[shuffled])  # a key belongs to the sample, not to its batch or epoch
    assert not torch.equal(fake_labels(8, ids, labels, 10, epsilon=0.5), once)  # another secret, other labels


def test_fake_labels_follow_randomised_response() -> None:
    ids = torch.arange(40_000)
    labels = ids % 10
    fake = fake_labels(3, ids, labels, 10, epsilon=0.5)
    kept = float((fake == labels).double().mean())
    assert kept == pytest.approx(keep_probability(0.5, 10), abs=0.01)
    assert keep_probability(0.5, 10) == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 9))
    changed = fake[fake != labels]
    counts = torch.bincount(changed, minlength=10).double()
    assert float(counts.min() / counts.max()) > 0.9  # the other classes are drawn uniformly
    independent = fake_labels(3, ids, labels, 10, epsilon=0.0)
    assert float((independent == labels).double().mean()) == pytest.approx(0.1, abs=0.01)


def _sum_top_label_party(defence: RandomisedLabelDefence | MarvellDefence, num_classes: int = 3) -> LabelParty:
    gen = torch.Generator().manual_seed(0)
    bottom = torch.nn.Linear(2, num_classes)
    with torch.no_grad():
        bottom.weight.copy_(torch.randn(num_classes, 2, generator=gen))
        bottom.bias.zero_()
    labels = torch.randint(num_classes, (20,), generator=gen)
    return LabelParty(
        bottom, torch.randn(20, 2, generator=gen), SumTop([num_classes, num_classes], num_classes), labels, defence
    )


def test_the_sent_gradient_carries_only_the_fake_label() -> None:
    party = _sum_top_label_party(RandomisedLabelDefence(epsilon=1.0, seed=5))
    ids = torch.tensor([0, 3, 4, 9])
    embedding = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    _, (sent,) = party.train_step(ids, [embedding])
    fake = fake_labels(5 * 1_000_003 + 0x5EC2E7, ids, party.labels[ids], 3, 1.0)
    torch.testing.assert_close(sent, (F.softmax(embedding, dim=1) - F.one_hot(fake, 3)) / 4)
    # The label party's own model does not shape the message: another bottom model sends the same gradient.
    other = _sum_top_label_party(RandomisedLabelDefence(epsilon=1.0, seed=5))
    assert isinstance(other.bottom_model, torch.nn.Linear)
    torch.nn.init.constant_(other.bottom_model.weight, 3.0)
    torch.testing.assert_close(other.train_step(ids, [embedding])[1][0], sent)


def test_randomised_label_needs_logit_embeddings_and_a_valid_epsilon() -> None:
    with pytest.raises(ValueError, match="logits"):
        RandomisedLabelDefence().setup(10, [16], seed=0)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epsilon"):
            build_defence("randomised_label", epsilon=bad)


# --- CoAE with noise ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def autoencoder() -> ConfusionalAutoencoder:
    return train_autoencoder(2, epochs=1, num_train=2_000, seed=0)


def test_coae_noise_is_coae_plus_seeded_noise(autoencoder: ConfusionalAutoencoder) -> None:
    defence = CoAENoiseDefence(scale=0.1, autoencoder=autoencoder)
    defence.setup(2, [2], seed=4)
    labels = torch.tensor([0, 1, 1])
    plain = CoAEDefence(autoencoder=autoencoder)
    plain.setup(2, [2], seed=4)
    torch.testing.assert_close(defence.encode_targets(labels, 2), plain.encode_targets(labels, 2))
    saved = defence.state_dict()
    gradient = torch.zeros(3, 2)
    noise = defence.protect_gradient(0, gradient)
    assert 0.0 < float(noise.std()) < 0.3
    restored = CoAENoiseDefence(scale=0.1)
    restored.load_state_dict(saved)  # no setup: a Flower label party restores instead of retraining
    assert torch.equal(restored.protect_gradient(0, gradient), noise)
    silent = CoAENoiseDefence(scale=0.0, autoencoder=autoencoder)
    silent.setup(2, [2], seed=4)
    assert torch.equal(silent.protect_gradient(0, torch.ones(3, 2)), torch.ones(3, 2))


# --- Marvell -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("u", "v", "p"), [(0.0, 0.0, 0.5), (0.01, 0.2, 0.3), (0.3, 0.05, 0.8)])
def test_marvell_covariances_keep_the_budget_and_beat_the_naive_split(u: float, v: float, p: float) -> None:
    d, power = 4, 2.0
    lams = solve_covariances(u, v, d, 1.0, p, power)
    used = (1 - p) * (lams[0] + (d - 1) * lams[1]) + p * (lams[2] + (d - 1) * lams[3])
    assert (lams >= 0).all() and used <= power + 1e-6
    isotropic = np.full(4, power / d)
    assert sum_kl(lams, u, v, d, 1.0) <= sum_kl(isotropic, u, v, d, 1.0) + 1e-9
    assert sum_kl(lams, u, v, d, 1.0) < sum_kl(np.zeros(4), u, v, d, 1.0)


def test_marvell_noise_depends_on_the_class_and_is_restored_exactly() -> None:
    party = _sum_top_label_party(MarvellDefence(power_ratio=4.0, seed=2), num_classes=2)
    ids = torch.arange(20)
    embedding = torch.zeros(20, 2)
    defence = party.defence
    saved = defence.state_dict()
    _, (sent,) = party.train_step(ids, [embedding])
    clean = _sum_top_label_party(MarvellDefence(power_ratio=0.0), num_classes=2).train_step(ids, [embedding])[1][0]
    noise = sent - clean
    gap = clean[party.labels == 1].mean(0) - clean[party.labels == 0].mean(0)
    assert float((noise**2).sum(1).mean()) > 0.5 * float((gap**2).sum())  # on the scale of the budget
    restored = MarvellDefence(power_ratio=4.0, seed=2)
    restored.load_state_dict(saved)
    restored.encode_batch_targets(ids, party.labels, 2)
    torch.testing.assert_close(restored.protect_gradient(0, clean), sent)


def test_marvell_is_for_binary_tasks() -> None:
    with pytest.raises(ValueError, match="binary"):
        MarvellDefence().setup(10, [10], seed=0)
    with pytest.raises(ValueError, match="power_ratio"):
        build_defence("marvell", power_ratio=-1.0)


def test_marvells_solve_is_the_same_on_any_number_of_blas_threads() -> None:
    """The in-process runner and Flower's ClientApps ran it on 2 and 1 OpenBLAS threads, and SLSQP ended at another
    optimum for most inputs: Marvell's figures depended on the runtime and the machine, not the seed alone."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    cases = [
        (*rng.uniform(0.01, 2, 2), int(rng.integers(2, 70)), 1.0, float(rng.uniform(0.1, 0.9)), 4.0) for _ in range(40)
    ]
    with threadpool_limits(limits=1):
        one = [solve_covariances(*case) for case in cases]
    with threadpool_limits(limits=2):
        two = [solve_covariances(*case) for case in cases]
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
