"""Label-inference attacks on hand-built gradients, plus one short end-to-end split-training run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl_kd.vfl.attacks import (
    BatchLabelInference,
    DirectionScoring,
    DirectLabelInference,
    NormScoring,
    PassiveModelCompletion,
    available_attacks,
    build_attack,
)
from fl_kd.vfl.hooks import FeaturePartyAttack


def exact_gradient(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What a sum top sends back under a batch-mean cross entropy: ``(softmax - onehot) / B``."""
    onehot = F.one_hot(labels, logits.shape[1]).float()
    return (logits.softmax(dim=1) - onehot) / logits.shape[0]


def unit_rows(count: int, width: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randn(count, width, generator=generator)
    return rows / rows.norm(dim=1, keepdim=True)


# --- direct label inference ------------------------------------------------------------------------------


def test_dli_recovers_every_label_from_exact_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(5, (60,), generator=gen)
    attack = DirectLabelInference()
    for ids in (torch.arange(0, 30), torch.arange(30, 60)):
        logits = 3 * torch.randn(30, 5, generator=gen)
        attack.on_gradient(ids, logits, exact_gradient(logits, labels[ids]))
    result = attack.result(labels)
    assert result["recovery"] == 1.0
    assert result["num_samples"] == 60
    assert result["ap"] == result["ap_adaptive"] == 1.0
    assert result["attack_type"] == "LI"


def test_dli_reads_the_smallest_entry() -> None:
    # the last row is a confident sample whose softmax - 1 rounded to 0: the true class is still the minimum
    gradient = torch.tensor([[0.2, -0.5, 0.3], [-0.1, -0.4, 0.5], [0.4, 0.1, -0.2], [1e-8, 0.0, 2e-8]])
    attack = DirectLabelInference()
    attack.on_gradient(torch.arange(4), torch.zeros(4, 3), gradient)
    assert attack.result(torch.tensor([1, 1, 2, 1]))["recovery"] == 1.0
    assert attack.result(torch.tensor([0, 0, 0, 0]))["recovery"] == 0.0


def test_dli_guesses_uniformly_among_tied_minima() -> None:
    all_zero = DirectLabelInference(seed=3)
    all_zero.on_gradient(torch.arange(4000), torch.zeros(4000, 4), torch.zeros(4000, 4))
    assert abs(all_zero.result(torch.zeros(4000, dtype=torch.int64))["recovery"] - 0.25) < 0.02
    # classes 1 and 2 tie for the minimum: never class 0 or 3, each of 1 and 2 half the time
    tied = DirectLabelInference(seed=3)
    tied.on_gradient(torch.arange(4000), torch.zeros(4000, 4), torch.tensor([[0.5, -0.2, -0.2, 0.1]]).repeat(4000, 1))
    assert abs(tied.result(torch.ones(4000, dtype=torch.int64))["recovery"] - 0.5) < 0.03
    assert tied.result(torch.zeros(4000, dtype=torch.int64))["recovery"] == 0.0
    assert tied.result(torch.full((4000,), 3))["recovery"] == 0.0


def test_dli_scores_the_last_observation_of_each_sample() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.zeros(4, 3)
    right = exact_gradient(logits, labels)
    wrong = exact_gradient(logits, (labels + 1) % 3)
    ids = torch.arange(4)
    first_right = DirectLabelInference()
    first_right.on_gradient(ids, logits, right)
    first_right.on_gradient(ids[:2], logits[:2], wrong[:2])
    # samples 0 and 1 were last seen with wrong gradients
    assert first_right.result(labels)["recovery"] == 0.5


def test_dli_is_near_chance_on_random_gradients_and_seeded() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(4, (4000,), generator=gen)
    random_grads = torch.randn(4000, 4, generator=gen)
    attack = DirectLabelInference()
    attack.on_gradient(torch.arange(4000), torch.zeros(4000, 4), random_grads)
    assert abs(attack.result(labels)["recovery"] - 0.25) < 0.03
    # rows with no information at all: every guess is random, and the same seed gives the same guesses
    results = []
    for seed in (7, 7, 8):
        guesser = DirectLabelInference(seed=seed)
        guesser.on_gradient(torch.arange(4000), torch.zeros(4000, 4), torch.zeros(4000, 4))
        results.append(guesser.result(labels)["recovery"])
    assert abs(results[0] - 0.25) < 0.03
    assert results[0] == results[1] != results[2]


def test_dli_rejects_embeddings_that_are_not_logits_and_bad_shapes() -> None:
    attack = DirectLabelInference()
    attack.on_gradient(torch.arange(2), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="logits"):
        attack.result(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="same shape"):
        attack.on_gradient(torch.arange(2), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="observed no gradient"):
        DirectLabelInference().result(torch.tensor([0]))


# --- norm and direction scoring --------------------------------------------------------------------------


def test_norm_scoring_ranks_larger_norms_as_positive() -> None:
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor([1] * 10 + [0] * 30)
    norms = torch.where(labels == 1, 2 + torch.rand(40, generator=gen), 0.5 + 0.4 * torch.rand(40, generator=gen))
    gradient = unit_rows(40, 3, gen) * norms[:, None]
    attack = NormScoring()
    attack.on_gradient(torch.arange(40), torch.zeros(40, 3), gradient)
    assert attack.result(labels)["auc"] == 1.0
    # the same scores against flipped labels: raw AUC 0, but an adaptive attacker flips its guess
    flipped = attack.result(1 - labels)
    assert flipped["ap"] == 0.0
    assert flipped["ap_adaptive"] == 1.0


def test_scoring_attacks_need_binary_labels() -> None:
    attack = NormScoring()
    attack.on_gradient(torch.arange(3), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="binary"):
        attack.result(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="both classes"):
        attack.result(torch.tensor([1, 1, 1]))


def test_direction_scoring_separates_aligned_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    labels = (torch.arange(60) % 3 == 0).long()  # id 0 is a positive
    direction = torch.tensor([1.0, -2.0, 0.5, 1.0])
    sign = torch.where(labels == 1, 1.0, -1.0)
    gradient = sign[:, None] * direction + 0.3 * torch.randn(60, 4, generator=gen)
    attack = DirectionScoring(known_positive_ids=[0])
    for ids in (torch.arange(20, 40), torch.arange(0, 20), torch.arange(40, 60)):
        attack.on_gradient(ids, torch.zeros(20, 4), gradient[ids])
    result = attack.result(labels)
    assert result["auc"] == 1.0
    assert result["num_samples"] == 59  # the known positive is left out


def test_direction_scoring_uses_the_reference_of_the_same_or_nearest_earlier_batch() -> None:
    # Reference directions flip between batches, so only the right reference scores every sample correctly:
    # batch 0 holds known positive 0 (direction e0), batch 1 none, batch 2 known positive 4 (direction -e0).
    e0 = torch.tensor([1.0, 0.0])
    gradient = torch.stack([e0, e0, -e0, e0, -e0, -e0, e0, e0])
    labels = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0])
    attack = DirectionScoring(known_positive_ids=[0, 4])
    for ids in (torch.tensor([0, 1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6, 7])):
        attack.on_gradient(ids, torch.zeros(len(ids), 2), gradient[ids])
    result = attack.result(labels)
    assert result["num_samples"] == 6
    assert result["auc"] == 1.0


def test_direction_scoring_knowledge() -> None:
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    drawn = DirectionScoring(num_known=2, seed=0).known_positives(labels)
    assert set(drawn.tolist()) <= {1, 3, 4} and drawn.numel() == 2
    assert drawn.tolist() == DirectionScoring(num_known=2, seed=0).known_positives(labels).tolist()
    with pytest.raises(ValueError, match="known positive"):
        DirectionScoring(known_positive_ids=[])
    with pytest.raises(ValueError, match="cannot draw"):
        DirectionScoring(num_known=4).known_positives(labels)
    unseen = DirectionScoring(known_positive_ids=[5])
    unseen.on_gradient(torch.arange(3), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="never observed"):
        unseen.result(labels)


# --- batch label inference -------------------------------------------------------------------------------


def linear_setup_gradients(top: str, num_classes: int, width: int, seed: int) -> tuple[list, torch.Tensor]:
    """Batches ``(ids, h, grad)`` of a linear attacker bottom model under a sum or linear top, by autograd."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (32,), generator=gen)
    features = torch.randn(32, 5, generator=gen)
    bottom = torch.randn(width, 5, generator=gen)
    top_weight = 0.3 * torch.randn(num_classes, width, generator=gen)
    peer = torch.randn(32, num_classes, generator=gen)
    batches = []
    for ids in (torch.arange(16), torch.arange(16, 32)):
        h = (features[ids] @ bottom.T).requires_grad_()
        logits = (h if top == "sum" else h @ top_weight.T) + peer[ids]
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels[ids]), h)
        batches.append((ids, h.detach(), grad))
    return batches, labels


def test_bli_recovers_labels_under_a_sum_top() -> None:
    batches, labels = linear_setup_gradients("sum", num_classes=3, width=3, seed=0)
    attack = BatchLabelInference(top="sum", num_batches=2)
    for batch in batches:
        attack.on_gradient(*batch)
    result = attack.result(labels)
    assert result["num_samples"] == 32
    assert result["recovery"] >= 0.9


def test_bli_recovers_binary_labels_under_a_trainable_linear_top() -> None:
    batches, labels = linear_setup_gradients("linear", num_classes=2, width=6, seed=1)
    attack = BatchLabelInference(top="linear", num_batches=2)
    for batch in batches:
        attack.on_gradient(*batch)
    result = attack.result(labels)
    # the class names are not identifiable with a trainable top; an adaptive attacker flips them
    assert result["ap_adaptive"] >= 0.85
    assert result["recovery_up_to_permutation"] == pytest.approx(result["ap_adaptive"])


def test_bli_attacks_only_the_selected_batches() -> None:
    batches, labels = linear_setup_gradients("sum", num_classes=3, width=3, seed=0)
    attack = BatchLabelInference(num_batches=1, first_batch=1, steps=2)
    for batch in batches:
        attack.on_gradient(*batch)
    assert attack.result(labels)["num_batches"] == 1
    late = BatchLabelInference(first_batch=5, steps=2)
    late.on_gradient(*batches[0])
    with pytest.raises(ValueError, match="none at or after"):
        late.result(labels)
    with pytest.raises(ValueError, match="top must be"):
        BatchLabelInference(top="deep")


# --- passive model completion ----------------------------------------------------------------------------


def blobs(num_classes: int, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(num_classes, 4, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(labels.numel(), 4, generator=gen), labels


def frozen_bottom(seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bottom = nn.Linear(4, 8)
    with torch.no_grad():
        bottom.weight.copy_(torch.randn(8, 4, generator=gen))
        bottom.bias.zero_()
    return bottom


def test_model_completion_beats_chance_on_separable_classes() -> None:
    features, labels = blobs(num_classes=3, per_class=100, seed=0)
    attack = PassiveModelCompletion(num_known=30, steps=200)
    attack.after_training(frozen_bottom(0), features)
    known = attack.known_indices(labels, 3)
    assert torch.bincount(labels[known]).tolist() == [10, 10, 10]
    result = attack.result(labels)
    assert result["num_samples"] == 270
    assert result["accuracy"] > 0.9
    assert result == attack.result(labels)  # seeded: the same numbers again


def test_model_completion_reports_auc_for_binary_tasks() -> None:
    features, labels = blobs(num_classes=2, per_class=60, seed=1)
    attack = PassiveModelCompletion(num_known=10, steps=100)
    attack.after_training(frozen_bottom(1), features)
    result = attack.result(labels)
    assert result["ap"] == result["auc"] > 0.9
    with pytest.raises(ValueError, match="after_training"):
        PassiveModelCompletion().result(labels)
    with pytest.raises(ValueError, match="feature rows"):
        attack.result(labels[:10])


# --- registry --------------------------------------------------------------------------------------------


def test_registry_builds_attacks_by_name() -> None:
    assert {
        "direct_label_inference",
        "norm_scoring",
        "direction_scoring",
        "batch_label_inference",
        "passive_model_completion",
        "adaptive_label_inference",
        "gradient_clustering",
        "none",
    } == set(available_attacks())
    attack = build_attack("batch_label_inference", steps=5, top="linear")
    assert isinstance(attack, BatchLabelInference) and attack.steps == 5
    assert type(build_attack("none")) is FeaturePartyAttack
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("gradient_magic")
    with pytest.raises(ValueError, match="bad parameters"):
        build_attack("norm_scoring", steps=3)


# --- end to end ------------------------------------------------------------------------------------------


def test_attacks_during_split_training_without_defence() -> None:
    from fl_kd.data import load_dataset
    from fl_kd.vfl.models import BottomMLP, build_top_model
    from fl_kd.vfl.parties import FeatureParty, LabelParty
    from fl_kd.vfl.split import split_features
    from fl_kd.vfl.trainer import evaluate_vfl, train_vfl

    data = load_dataset("breast_cancer")
    train_cols = split_features(data.x_train, "blocks", 2)
    parties = [
        FeatureParty(k, BottomMLP(x.shape[1], 2, hidden=(16,), seed=k), x, lr=0.05, seed=k)
        for k, x in enumerate(train_cols)
    ]
    label_party = LabelParty(None, None, build_top_model("sum", [2, 2], 2), data.y_train, lr=0.05)
    attacks = [
        DirectLabelInference(),
        BatchLabelInference(top="sum", num_batches=1, steps=200),
        PassiveModelCompletion(steps=200),
    ]
    train_vfl(parties, label_party, data.x_train.shape[0], epochs=3, batch_size=32, seed=0, attacks=attacks)
    mp = evaluate_vfl(parties, label_party, split_features(data.x_test, "blocks", 2), data.y_test)
    dli, bli, completion = (attack.result(data.y_train) for attack in attacks)
    assert mp["accuracy"] > 0.85
    assert dli["num_samples"] == data.x_train.shape[0]
    assert dli["recovery"] == 1.0
    assert bli["recovery"] >= 0.9
    assert completion["auc"] > 0.8


# --- the attacker's observation log -------------------------------------------------------------------------


def test_observation_log_replays_what_the_party_saw_and_survives_storage() -> None:
    import numpy as np

    from fl_kd.vfl.attacks import ObservationLog

    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.arange(4) + 4 * b, torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)) for b in range(3)
    ]
    live = DirectLabelInference(seed=1)
    log = ObservationLog()
    for b, (ids, embedding, gradient) in enumerate(batches):
        live.on_gradient(ids, embedding, gradient)
        assert not log.observe(b, ids.numpy(), gradient.numpy())  # nothing was sent for this batch yet
        log.sent({b: embedding.numpy()})
        assert not log.observe(b, ids.numpy(), gradient[:, :1].numpy())  # not the gradient of what was sent
        assert not log.observe(b, ids.numpy(), np.full((4, 2), np.nan, dtype=np.float32))
        assert log.observe(b, ids.numpy(), gradient.numpy())
    stored = ObservationLog(log.entries())  # as a ClientApp keeps it between messages
    assert len(stored) == 3
    replayed = DirectLabelInference(seed=1)
    stored.replay([replayed])
    labels = torch.randint(0, 2, (12,), generator=gen)
    assert replayed.result(labels) == live.result(labels)
