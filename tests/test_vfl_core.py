"""Vertical FL core: sample alignment, column splits, parties, the training loop and the experiment runner."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fl_kd.config import ConfigError
from fl_kd.vfl import (
    BottomMLP,
    FeatureParty,
    FeaturePartyAttack,
    LabelDefence,
    LabelParty,
    MLPTop,
    SumTop,
    align_samples,
    batch_order,
    build_experiment,
    evaluate_vfl,
    make_split,
    run_vfl,
    split_features,
    train_vfl,
)


@dataclass
class Synthetic:
    """A tiny binary task whose label needs columns of both halves, in the shape of ``DatasetSplits``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 2
    input_shape: tuple[int, ...] = (6,)


def synthetic(num_train: int = 160, num_test: int = 80, seed: int = 0) -> Synthetic:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_train + num_test, 6, generator=gen)
    y = (x[:, 0] + x[:, 4] > 0).long()
    return Synthetic(x[:num_train], y[:num_train], x[num_train:], y[num_train:])


def two_feature_parties(
    dims: tuple[int, int] = (4, 6), num: int = 40, top: str = "mlp"
) -> tuple[list[FeatureParty], LabelParty]:
    """Two feature parties (3 columns each) and a label-only party, with distinct embedding sizes."""
    data = synthetic(num_train=num)
    columns = split_features(data.x_train, "halves")
    parties = [
        FeatureParty(k, BottomMLP(3, dims[k], hidden=(8,), seed=k), columns[k], lr=0.1, seed=k) for k in range(2)
    ]
    top_model = MLPTop(list(dims), 2, seed=5) if top == "mlp" else SumTop(list(dims), 2)
    return parties, LabelParty(None, None, top_model, data.y_train, lr=0.1, seed=0)


def snapshot(*objects: Any) -> list[dict[str, Any]]:
    return [copy.deepcopy(obj.state_dict()) for obj in objects]


def assert_same_state(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    def flat(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [x for key in sorted(value, key=str) for x in [key, *flat(value[key])]]
        if isinstance(value, list | tuple):
            return [x for item in value for x in flat(item)]
        return [value]

    for old, new in zip(before, after, strict=True):
        old_flat, new_flat = flat(old), flat(new)
        assert len(old_flat) == len(new_flat)
        for a, b in zip(old_flat, new_flat, strict=True):
            if isinstance(a, Tensor):
                assert torch.equal(a, b)
            else:
                assert a == b


# --- alignment and splits -------------------------------------------------------------------------


def test_align_samples_returns_positions_of_the_sorted_intersection() -> None:
    ids = [np.array([5, 3, 9, 1]), np.array([9, 1, 7, 5]), np.array([1, 9, 5, 2, 8])]
    positions = align_samples(ids)
    np.testing.assert_array_equal(positions[0], [3, 0, 2])
    np.testing.assert_array_equal(positions[1], [1, 3, 0])
    np.testing.assert_array_equal(positions[2], [0, 2, 1])
    for party_ids, pos in zip(ids, positions, strict=True):
        np.testing.assert_array_equal(party_ids[pos], [1, 5, 9])


def test_align_samples_rejects_empty_intersection_and_duplicates() -> None:
    with pytest.raises(ValueError, match="share no sample ids"):
        align_samples([np.array([1, 2]), np.array([3, 4])])
    with pytest.raises(ValueError, match="duplicate"):
        align_samples([np.array([1, 1, 2]), np.array([1, 2])])
    with pytest.raises(ValueError, match="at least one party"):
        align_samples([])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 30), min_size=1, max_size=20), min_size=1, max_size=4), st.randoms())
def test_align_samples_property(id_sets: list[set[int]], random: Any) -> None:
    parties = []
    for ids in id_sets:
        order = sorted(ids)
        random.shuffle(order)
        parties.append(np.array(order, dtype=np.int64))
    shared = sorted(set.intersection(*id_sets))
    if not shared:
        with pytest.raises(ValueError):
            align_samples(parties)
        return
    for party_ids, positions in zip(parties, align_samples(parties), strict=True):
        assert party_ids[positions].tolist() == shared


@given(st.integers(1, 40), st.integers(1, 6))
def test_blocks_partition_every_feature_once(num_features: int, num_parties: int) -> None:
    if num_parties > num_features:
        with pytest.raises(ValueError):
            make_split((num_features,), "blocks", num_parties)
        return
    split = make_split((num_features,), "blocks", num_parties)
    assert np.concatenate(split.columns).tolist() == list(range(num_features))
    assert max(split.party_sizes) - min(split.party_sizes) <= 1


def test_image_halves_are_left_and_right_columns() -> None:
    split = make_split((1, 4, 4), "halves")
    np.testing.assert_array_equal(split.columns[0], [0, 1, 4, 5, 8, 9, 12, 13])
    np.testing.assert_array_equal(split.columns[1], [2, 3, 6, 7, 10, 11, 14, 15])
    images = torch.rand(3, 1, 28, 28)
    left, right = split_features(images, "halves")
    assert left.shape == right.shape == (3, 392)
    assert torch.equal(left.reshape(3, 28, 14), images[:, 0, :, :14])
    assert torch.equal(right.reshape(3, 28, 14), images[:, 0, :, 14:])


def test_tabular_blocks_and_explicit_splits() -> None:
    blocks = make_split((5,), "blocks", num_parties=2)
    assert [c.tolist() for c in blocks.columns] == [[0, 1, 2], [3, 4]]
    x = torch.arange(10.0).reshape(2, 5)
    first, second = split_features(x, [[4, 0], [2]])
    assert torch.equal(first, x[:, [0, 4]])
    assert torch.equal(second, x[:, [2]])
    with pytest.raises(ValueError, match="disjoint"):
        make_split((5,), [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="outside"):
        make_split((5,), [[0, 5]])
    with pytest.raises(ValueError, match="unknown split scheme"):
        make_split((5,), "rows")


# --- parties --------------------------------------------------------------------------------------


def test_sum_top_sends_softmax_minus_target_over_batch_size() -> None:
    logits = [
        torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 0.0]]),
        torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    ]
    labels = torch.tensor([2, 1])
    party = LabelParty(None, None, SumTop([3, 3], 3), labels, lr=0.1)
    loss, grads = party.train_step(torch.tensor([0, 1]), logits)
    total = logits[0] + logits[1]
    expected = (F.softmax(total, dim=1) - F.one_hot(labels, 3)) / 2
    for grad in grads:
        torch.testing.assert_close(grad, expected)
    assert loss == pytest.approx(float(F.cross_entropy(total, labels)))


def test_label_party_calls_defence_hooks_in_documented_order() -> None:
    calls: list[str] = []

    class Recording(LabelDefence):
        def transform_embedding(self, party: int, embedding: Tensor) -> Tensor:
            calls.append(f"transform{party}")
            return embedding

        def encode_targets(self, labels: Tensor, num_classes: int) -> Tensor:
            calls.append("encode")
            return super().encode_targets(labels, num_classes)

        def extra_loss(self) -> Tensor | None:
            calls.append("extra")
            return None

        def protect_gradient(self, party: int, gradient: Tensor) -> Tensor:
            calls.append(f"protect{party}")
            return 2 * gradient

    parties, plain = two_feature_parties()
    defended = LabelParty(None, None, copy.deepcopy(plain.top_model), plain.labels, defence=Recording(), lr=0.1)
    ids = torch.arange(5)
    embeddings = [p.embed(ids).detach() for p in parties]
    _, plain_grads = plain.train_step(ids, embeddings)
    _, grads = defended.train_step(ids, embeddings)
    assert calls == ["transform0", "transform1", "encode", "extra", "protect0", "protect1"]
    for plain_grad, grad in zip(plain_grads, grads, strict=True):
        torch.testing.assert_close(grad, 2 * plain_grad)


@pytest.mark.parametrize(
    "embeddings, match",
    [
        (lambda e: [e[0]], "expected 2 embeddings"),
        (lambda e: [e[0], e[1][:, :5]], "shape"),
        (lambda e: [e[0], e[1][:3]], "shape"),
        (lambda e: [e[0], torch.where(e[1] > 0, torch.nan, e[1])], "NaN or inf"),
        (lambda e: [e[0].masked_fill(e[0] > 0, float("inf")), e[1]], "NaN or inf"),
    ],
)
def test_bad_embeddings_raise_before_any_update(embeddings: Any, match: str) -> None:
    parties, label_party = two_feature_parties()
    ids = torch.arange(4)
    good = [p.embed(ids).detach() for p in parties]
    before = snapshot(label_party)
    with pytest.raises(ValueError, match=match):
        label_party.train_step(ids, embeddings(good))
    assert_same_state(before, snapshot(label_party))


@pytest.mark.parametrize(
    "make_grad, match",
    [
        (lambda e: torch.full_like(e, float("nan")), "NaN or inf"),
        (lambda e: torch.zeros_like(e).index_fill(1, torch.tensor([0]), float("inf")), "NaN or inf"),
        (lambda e: torch.zeros(e.shape[0], e.shape[1] + 1), "does not match"),
        (lambda e: torch.zeros(e.shape[0] - 1, e.shape[1]), "does not match"),
    ],
)
def test_bad_gradient_raises_and_leaves_the_bottom_model_untouched(make_grad: Any, match: str) -> None:
    parties, _ = two_feature_parties()
    party = parties[0]
    ids = torch.arange(6)
    embedding = party.embed(ids)
    before = snapshot(party)
    with pytest.raises(ValueError, match=match):
        party.apply_gradient(ids, make_grad(embedding.detach()))
    assert_same_state(before, snapshot(party))
    # a good gradient for the same batch still goes through afterwards
    party.apply_gradient(ids, torch.ones_like(embedding))
    assert not torch.equal(before[0]["model"]["layers.0.weight"], party.bottom_model.state_dict()["layers.0.weight"])


def test_apply_gradient_matches_plain_backprop() -> None:
    parties, _ = two_feature_parties()
    party = parties[0]
    reference = copy.deepcopy(party.bottom_model)
    ids = torch.tensor([3, 1, 7])
    grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    party.embed(ids)
    party.apply_gradient(ids, grad)
    reference(party.features[ids]).backward(grad)
    with torch.no_grad():
        for param in reference.parameters():
            assert param.grad is not None
            param -= 0.1 * param.grad  # type: ignore[misc]  # in place: still the Parameter
    for ours, expected in zip(party.bottom_model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, expected)


def test_party_state_dicts_round_trip() -> None:
    parties, label_party = two_feature_parties()
    train_vfl(parties, label_party, 40, epochs=1, batch_size=16, seed=0)
    fresh_parties, fresh_label = two_feature_parties()
    for fresh, trained in zip(fresh_parties, parties, strict=True):
        fresh.load_state_dict(trained.state_dict())
    fresh_label.load_state_dict(label_party.state_dict())
    x = [p.features[:5] for p in parties]
    torch.testing.assert_close(
        evaluate_vfl(fresh_parties, fresh_label, x, label_party.labels[:5]),
        evaluate_vfl(parties, label_party, x, label_party.labels[:5]),
    )
    # both continue identically: the optimiser state and step counters travelled too
    for group in ((parties, label_party), (fresh_parties, fresh_label)):
        train_vfl(group[0], group[1], 40, epochs=1, batch_size=16, seed=1)
    for fresh, trained in zip(fresh_parties, parties, strict=True):
        assert_same_state(snapshot(trained), snapshot(fresh))


# --- training loop --------------------------------------------------------------------------------


def test_batch_order_covers_every_sample_once_per_epoch_and_is_seeded() -> None:
    batches = batch_order(10, 4, seed=3, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(batches, batch_order(10, 4, 3, 0), strict=True))
    assert not torch.equal(torch.cat(batches), torch.cat(batch_order(10, 4, 3, 1)))


def test_manual_message_steps_reproduce_train_vfl() -> None:
    # The per-batch units a Flower app sends as messages give the same models as the in-process loop.
    parties_a, label_a = two_feature_parties()
    parties_b, label_b = two_feature_parties()
    train_vfl(parties_a, label_a, 40, epochs=2, batch_size=16, seed=4)
    for epoch in range(2):
        for ids in batch_order(40, 16, 4, epoch):
            sent = [p.embed(ids.numpy()).detach().clone() for p in parties_b]
            _, grads = label_b.train_step(ids, sent)
            for party, grad in zip(parties_b, grads, strict=True):
                party.apply_gradient(ids, grad.clone())
    assert_same_state(snapshot(*parties_a, label_a), snapshot(*parties_b, label_b))


def test_failing_feature_party_skips_the_batch_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    parties, label_party = two_feature_parties()

    class Flaky(FeatureParty):
        calls = 0

        def embed(self, sample_ids: Any) -> Tensor:
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ConnectionError("party 1 went away")
            return super().embed(sample_ids)

    flaky = Flaky(1, parties[1].bottom_model, parties[1].features, lr=0.1, seed=1)
    with caplog.at_level(logging.WARNING, logger="fl_kd.vfl.trainer"):
        history = train_vfl([parties[0], flaky], label_party, 40, epochs=1, batch_size=16, seed=0)
    assert [(s["epoch"], s["batch"]) for s in history.skipped_batches] == [(1, 1)]  # epochs from 1
    assert history.num_batches == 3
    assert "epoch 1 batch 1 skipped" in caplog.text
    assert "party 1 went away" in caplog.text
    assert label_party.state_dict()["step"] == 2


def test_failing_feature_party_updates_no_model() -> None:
    parties, label_party = two_feature_parties()

    class Broken(FeatureParty):
        def embed(self, sample_ids: Any) -> Tensor:
            raise RuntimeError("broken")

    broken = Broken(1, parties[1].bottom_model, parties[1].features, lr=0.1, seed=1)
    before = snapshot(parties[0], broken, label_party)
    history = train_vfl([parties[0], broken], label_party, 40, epochs=1, batch_size=16, seed=0)
    assert len(history.skipped_batches) == 3
    # party 0 embedded every batch before party 1 failed, yet nobody stepped
    after = snapshot(parties[0], broken, label_party)
    for state in (before, after):
        state[0].pop("step")
    assert_same_state(before, after)


def test_nan_embeddings_are_rejected_and_the_batch_skipped(caplog: pytest.LogCaptureFixture) -> None:
    parties, label_party = two_feature_parties()

    class Poisoned(FeatureParty):
        def embed(self, sample_ids: Any) -> Tensor:
            return super().embed(sample_ids) * torch.nan

    poisoned = Poisoned(1, parties[1].bottom_model, parties[1].features, lr=0.1, seed=1)
    before = snapshot(parties[0], label_party)
    with caplog.at_level(logging.WARNING):
        history = train_vfl([parties[0], poisoned], label_party, 40, epochs=1, batch_size=20, seed=0)
    assert len(history.skipped_batches) == 2
    assert "rejected the embeddings" in caplog.text
    after = snapshot(parties[0], label_party)
    before[0].pop("step"), after[0].pop("step")
    assert_same_state(before, after)


class Recorder(FeaturePartyAttack):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []
        self.final: tuple[torch.nn.Module, Tensor] | None = None

    def on_gradient(self, sample_ids: Tensor, embedding: Tensor, gradient: Tensor) -> None:
        self.seen.append((sample_ids.clone(), embedding.clone(), gradient.clone()))

    def after_training(self, bottom_model: torch.nn.Module, features: Tensor) -> None:
        self.final = (bottom_model, features)


@pytest.mark.parametrize("attacker", [0, 1])
def test_attack_hook_sees_exactly_the_attackers_messages(attacker: int) -> None:
    parties, label_party = two_feature_parties(dims=(4, 6))
    received: list[tuple[Tensor, Tensor]] = []
    original = parties[attacker].apply_gradient

    def spy(sample_ids: Any, grad: Tensor) -> None:
        received.append((torch.as_tensor(sample_ids).clone(), grad.clone()))
        original(sample_ids, grad)

    parties[attacker].apply_gradient = spy  # type: ignore[method-assign]
    recorder = Recorder()
    train_vfl(parties, label_party, 40, epochs=2, batch_size=16, seed=0, attacks=[recorder], attacker_party=attacker)
    assert len(recorder.seen) == len(received) == 6
    for (ids, embedding, gradient), (sent_ids, sent_grad) in zip(recorder.seen, received, strict=True):
        assert torch.equal(ids, sent_ids)
        assert torch.equal(gradient, sent_grad)
        assert embedding.shape == gradient.shape == (len(ids), (4, 6)[attacker])
        assert not embedding.requires_grad
    assert recorder.final is not None
    assert recorder.final[0] is parties[attacker].bottom_model
    assert torch.equal(recorder.final[1], parties[attacker].features)


# --- experiment runner ----------------------------------------------------------------------------


def test_breast_cancer_two_parties_learn_in_a_few_epochs() -> None:
    result = run_vfl({"dataset": {"name": "breast_cancer"}, "vfl_model": {"top": "mlp"}, "attack": {}})
    assert result["auc"] > 0.9
    assert result["mp"] > 0.85
    assert result["skipped_batches"] == 0
    assert result["train_loss"][-1] < result["train_loss"][0]


def test_same_seed_same_metrics_other_seed_differs() -> None:
    data = synthetic()
    config: dict[str, Any] = {"training": {"epochs": 2, "batch_size": 32}, "seed": 7, "attack": {}}
    first, second = run_vfl(config, data=data), run_vfl(config, data=data)
    for key in ("mp", "auc", "train_loss"):
        assert first[key] == second[key]
    other = run_vfl({**config, "seed": 8}, data=data)
    assert other["train_loss"] != first["train_loss"]


def test_build_experiment_wires_label_party_features_and_sum_top() -> None:
    data = synthetic()
    with_features = build_experiment({"vfl_split": {"scheme": "blocks", "num_parties": 3}}, data=data)
    assert len(with_features.feature_parties) == 2
    assert with_features.label_party.features is not None
    assert with_features.label_party.features.shape == (160, 2)
    assert with_features.label_party.embedding_dims == [2, 2]
    labels_only = build_experiment({"vfl_split": {"label_party_features": False}}, data=data)
    assert len(labels_only.feature_parties) == 2
    assert labels_only.label_party.features is None
    result = run_vfl({"vfl_split": {"label_party_features": False}, "training": {"epochs": 3}, "attack": {}}, data=data)
    assert result["mp"] > 0.7


def test_config_errors_are_explicit() -> None:
    with pytest.raises(ConfigError, match="unknown key epoch in training"):
        build_experiment({"training": {"epoch": 3}}, data=synthetic())
    with pytest.raises(ConfigError, match="no feature party"):
        build_experiment({"vfl_split": {"scheme": "blocks", "num_parties": 1}}, data=synthetic())
    with pytest.raises(ConfigError, match="defence.name='tinfoil' is not one of"):
        build_experiment({"defence": {"name": "tinfoil"}}, data=synthetic())
    # Only the data tells the class count, so this one surfaces when the label party is built.
    with pytest.raises(ValueError, match="vfl_model.embedding_dim=4 must be the 2 classes"):
        build_experiment({"vfl_model": {"embedding_dim": 4}}, data=synthetic())
