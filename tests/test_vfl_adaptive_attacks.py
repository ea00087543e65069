"""Attacks that adapt to the defence: every epoch, both signs and renamings, gradient clustering, known labels."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import Tensor

from fl_kd.simulations.vfl_schema import load_config, register_vfl_schema
from fl_kd.vfl.attacks import (
    AdaptiveLabelInference,
    DirectLabelInference,
    GradientClustering,
    PassiveModelCompletion,
    score_attacks,
)
from fl_kd.vfl.attacks.adaptive import EpochGradients, draw_known, fit_relabelling
from fl_kd.vfl.attacks.gradient_clustering import kmeans
from fl_kd.vfl.hooks import FeaturePartyAttack
from fl_kd.vfl.metrics import worst_case_ap
from fl_kd.vfl.results import build_results
from fl_kd.vfl.trainer import TrainingHistory

N, C = 600, 10


def feed(attacks: list[FeaturePartyAttack], epochs: list[Tensor], batch: int = 50, seed: int = 0) -> None:
    """Feed each epoch's gradients ``(N, D)`` (row = sample id) in shuffled batches to every attack."""
    generator = torch.Generator().manual_seed(seed)
    for gradients in epochs:
        order = torch.randperm(gradients.shape[0], generator=generator)
        for start in range(0, order.numel(), batch):
            ids = order[start : start + batch]
            for attack in attacks:
                attack.on_gradient(ids, torch.zeros(ids.numel(), gradients.shape[1]), gradients[ids])


def labels_and_noise(seed: int = 0, n: int = N, width: int = C) -> tuple[Tensor, Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=generator)
    return labels, 0.02 * torch.randn(n, width, generator=generator), generator


def coae_like(labels: Tensor, noise: Tensor) -> Tensor:
    """``p - y_fake`` with a confused target: ~0 at the true class, 1/9 elsewhere, so the true class is the largest."""
    target = torch.full((labels.numel(), C), 1.0 / (C - 1))
    target[torch.arange(labels.numel()), labels] = 0.0
    return 0.1 + noise - target


# --- the sign and renaming attack --------------------------------------------------------------------------


def test_adaptive_sign_recovers_labels_that_stand_out_positively_where_dli_fails() -> None:
    labels, noise, generator = labels_and_noise()
    informative = coae_like(labels, noise)
    late = torch.randn(N, C, generator=generator)  # a later epoch that carries nothing
    adaptive, dli, dli_first = AdaptiveLabelInference(), DirectLabelInference(), DirectLabelInference()
    feed([adaptive, dli], [informative, late])
    feed([dli_first], [informative])
    out = adaptive.result(labels)
    assert dli.result(labels)["ap_adaptive"] < 0.15  # chance: the last epoch carries nothing
    assert dli_first.result(labels)["ap_adaptive"] < 0.05  # the most negative entry is never the true class
    assert out["ap"] >= 0.95 and out["ap_adaptive"] == out["ap"]
    assert out["epoch"] == 1 and out["choice"] == "argmax"
    assert [row["epoch"] for row in out["per_epoch"]] == [1, 2]
    assert out["per_epoch"][1]["ap"] < 0.2
    assert out["epoch_oracle"] == 1 and out["ap_oracle"] == out["ap"]


def test_the_ap_is_the_reading_the_known_labels_pick_not_the_oracles_best() -> None:
    """On gradients that carry nothing, the best of many readings, picked with the scored labels, looks like a leak;
    the attacker can only pick by its known labels, and that reading's AP is the one reported."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (455,), generator=generator)
    attack = AdaptiveLabelInference(num_classes=2)
    feed([attack], [torch.randn(455, 2, generator=generator) for _ in range(15)])
    out = attack.result(labels)
    readings = out["per_epoch"] + out["per_average"]
    assert len(readings) == 29
    picked = max(readings, key=lambda row: row["known_fit"])
    assert out["ap"] == picked["ap"] and out["epoch"] == picked["epoch"]
    assert out["ap_oracle"] == max(max(r["ap"], 1 - r["ap"]) for r in readings) > 0.53
    assert abs(out["ap_adaptive"] - 0.5) < 0.05  # chance, as it should read


def test_adaptive_sign_undoes_a_fixed_renaming_of_the_classes() -> None:
    labels, noise, _ = labels_and_noise(seed=1)
    renamed = (labels + 3) % C
    gradients = noise + 0.5
    gradients[torch.arange(N), renamed] = -0.5  # DLI reads the class the defence renamed it to
    adaptive, dli = AdaptiveLabelInference(), DirectLabelInference()
    feed([adaptive, dli], [gradients])
    assert dli.result(labels)["ap"] == 0.0
    out = adaptive.result(labels)
    assert out["ap"] == 1.0 and out["choice"] == "argmin, renamed"


def test_adaptive_sign_on_a_binary_task_orients_its_score_by_the_known_labels() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 2, (400,), generator=generator)
    # the true class stands out positively: class 1 has the larger g_1, so the argmin reading is turned round
    g0 = (1.0 - 2.0 * labels) * 0.1 + 0.05 * torch.randn(400, generator=generator)
    gradients = torch.stack([g0, -g0], dim=1)
    attack = AdaptiveLabelInference()
    feed([attack], [gradients])
    out = attack.result(labels)
    assert out["num_known"] == 4 and out["num_samples"] == 396
    assert out["ap"] > 0.95 and out["choice"] == "argmax"


def test_fit_relabelling_is_the_identity_without_evidence() -> None:
    mapping = fit_relabelling(torch.tensor([2, 2, 0]), torch.tensor([1, 1, 2]), 4)
    assert mapping[2] == 1 and mapping[0] == 2
    assert sorted(mapping.tolist()) == [0, 1, 2, 3] and mapping[3] == 3  # unseen guess 3 keeps its name


# --- clustering ---------------------------------------------------------------------------------------------


def planted(seed: int, n: int = N, width: int = 16, classes: int = 5) -> tuple[Tensor, Tensor]:
    """Gradients of a planted cluster per class, each row rescaled at random (so only its direction tells)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, width, generator=generator)
    scale = torch.rand(n, 1, generator=generator) * 10 + 0.01
    return labels, scale * (centres[labels] + 0.2 * torch.randn(n, width, generator=generator))


def test_clustering_recovers_planted_classes_with_a_handful_of_known_labels() -> None:
    labels, gradients = planted(seed=3)
    attack, sign = GradientClustering(known_labels=10), AdaptiveLabelInference(known_labels=10)
    feed([attack, sign], [gradients])
    results = score_attacks({"gradient_clustering": attack, "adaptive_label_inference": sign}, labels)
    assert results["gradient_clustering"]["ap"] >= 0.97
    assert results["gradient_clustering"]["num_known"] == 10
    assert "error" in results["adaptive_label_inference"]  # a 16-wide gradient is no logit vector


def test_kmeans_finds_well_separated_clusters_and_is_seeded() -> None:
    points = torch.cat([torch.randn(50, 2) * 0.1 + offset for offset in (torch.tensor([5.0, 0]), torch.zeros(2))])
    assign, centroids, inertia = kmeans(points, 2, torch.Generator().manual_seed(0))
    assert assign[:50].unique().numel() == 1 and assign[50:].unique().numel() == 1 and assign[0] != assign[50]
    again = kmeans(points, 2, torch.Generator().manual_seed(0))
    assert torch.equal(assign, again[0]) and inertia == again[2]
    with pytest.raises(ValueError):
        kmeans(points[:1], 2, torch.Generator())


# --- known labels, epochs, determinism ----------------------------------------------------------------------


def test_known_labels_are_never_scored() -> None:
    labels, noise, _ = labels_and_noise(seed=4, n=200)
    known = draw_known(labels, 40, C, seed=0)
    gradients = noise.clone()
    gradients[known, labels[known]] = -1.0  # only the known samples carry their label
    attack = AdaptiveLabelInference()
    feed([attack], [gradients])
    out = attack.result(labels)
    assert out["num_known"] == known.numel() == 40 and out["num_samples"] == 160
    assert out["per_epoch"][0]["known_fit"] == 1.0
    assert out["ap"] < 0.2  # scoring the known samples too would give about 0.28


def test_known_labels_default_by_task_and_match_model_completion() -> None:
    labels, _, _ = labels_and_noise(seed=5)
    completion = PassiveModelCompletion(num_known=40, seed=7)
    assert torch.equal(draw_known(labels, 40, C, seed=7), completion.known_indices(labels, C))
    assert AdaptiveLabelInference(known_labels=20).known_labels == 20
    with pytest.raises(ValueError):
        GradientClustering(known_labels=0)


def test_epochs_are_told_apart_by_a_sample_seen_again() -> None:
    store = EpochGradients()
    for ids in ([0, 1], [2], [1, 3], [3, 0]):
        store.update(torch.tensor(ids), torch.ones(len(ids), 2))
    assert [store_.items()[0].tolist() for store_ in store.epochs] == [[0, 1, 2], [1, 3], [0, 3]]


@pytest.mark.parametrize("cls", [AdaptiveLabelInference, GradientClustering])
def test_attacks_are_deterministic_and_seeded(cls: type[AdaptiveLabelInference]) -> None:
    labels, noise, _ = labels_and_noise(seed=6)
    gradients = coae_like(labels, 5 * noise)

    def run(seed: int) -> dict[str, object]:
        attack = cls(seed=seed)
        feed([attack], [gradients])
        return attack.result(labels)

    assert run(0) == run(0)
    assert run(0)["per_epoch"] != run(1)["per_epoch"]  # another seed knows other labels


# --- the worst case over the suite, in the results ---------------------------------------------------------


def test_worst_case_ap_takes_the_highest_adaptive_ap_and_skips_errors() -> None:
    attacks: dict[str, dict[str, Any]] = {
        "a": {"ap": 0.3, "ap_adaptive": 0.7},
        "b": {"ap": 0.6, "ap_adaptive": 0.6},
        "c": {"error": "not applicable"},
    }
    assert worst_case_ap(attacks) == {"ap_worst_case": 0.7, "ap_worst_case_attack": "a"}
    assert worst_case_ap({"c": {"error": "x"}}) == {"ap_worst_case": None, "ap_worst_case_attack": None}
    results = build_results(load_config({}), TrainingHistory(), {"accuracy": 0.9}, attacks, 10, 1.0)
    assert results["ap_worst_case"] == 0.7 and results["ap_worst_case_attack"] == "a"


def test_the_new_attacks_are_chosen_in_the_config() -> None:
    register_vfl_schema()
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        cfg = compose(
            config_name="vfl",
            overrides=["attack=[adaptive_label_inference,gradient_clustering]", "attack.gradient_clustering.n_init=2"],
        )
    config = load_config(cfg)
    assert config.attack["adaptive_label_inference"] == {
        "known_labels": None,
        "num_classes": None,
        "seed": 0,
        "average_epochs": True,
    }
    assert config.attack["gradient_clustering"]["n_init"] == 2


@pytest.mark.parametrize("cls", [AdaptiveLabelInference, GradientClustering])
def test_averaging_epochs_undoes_fresh_noise(cls: type[AdaptiveLabelInference]) -> None:
    labels, _, generator = labels_and_noise(seed=4)
    signal = -0.01 * torch.nn.functional.one_hot(labels, C).float()
    epochs = [signal + 0.02 * torch.randn(N, C, generator=generator) for _ in range(8)]  # fresh noise each epoch
    averaging, single = cls(), cls(average_epochs=False)
    feed([averaging, single], epochs)
    out, plain = averaging.result(labels), single.result(labels)
    assert plain["per_average"] == [] and plain["averaged_epochs"] == 1
    assert [row["averaged_epochs"] for row in out["per_average"]] == list(range(2, 9))
    assert out["per_epoch"] == plain["per_epoch"]  # the single epochs are read as before
    assert out["averaged_epochs"] > 1 and out["ap"] > plain["ap"] + 0.2
