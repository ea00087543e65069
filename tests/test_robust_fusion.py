"""Robust fusion: median, trimmed mean, Krum and Multi-Krum resist an outlier the mean follows; the same arithmetic
as Flower's robust strategies; logit trust from labels; the strategies that pick them by config."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from fl_kd.config import ConfigError
from fl_kd.kd.fedgems import FedGEMSConfig
from fl_kd.kd.fusion import LOGIT_AGGREGATIONS
from fl_kd.kd.robust import ROBUST_RULES, AggregationConfig, RobustSettings
from fl_kd.kd.robust_weights import robust_average
from fl_kd.kd.runner import run_inprocess
from fl_kd.registry import Registry
from tests.test_adversary import config, federation

RNG = np.random.default_rng(7)
HONEST = 1.0 + 0.01 * RNG.standard_normal((4, 50))
WITH_OUTLIER = np.vstack([HONEST, np.full((1, 50), 1e3)])
COUNTS = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
ROBUST = ("median", "trimmed_mean", "krum", "multi_krum")


def test_mean_follows_one_outlier() -> None:
    fused = ROBUST_RULES.get("mean")(WITH_OUTLIER, np.ones(5), RobustSettings())
    assert fused.value.min() > 100
    assert fused.client_weights[4] == pytest.approx(0.2)


@pytest.mark.parametrize("rule", ROBUST)
def test_robust_rules_resist_one_outlier(rule: str) -> None:
    fused = ROBUST_RULES.get(rule)(WITH_OUTLIER, COUNTS, RobustSettings(num_malicious=1))
    assert np.abs(fused.value - 1.0).max() < 0.05
    assert fused.client_weights.sum() == pytest.approx(1.0)
    assert fused.client_weights[4] == 0.0


def test_the_rules_compute_what_flowers_robust_strategies_compute() -> None:
    results = [([row[:20].reshape(4, 5), row[20:]], int(n)) for row, n in zip(WITH_OUTLIER, COUNTS, strict=True)]

    def flat(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([a.ravel() for a in arrays])

    settings = RobustSettings(trim_fraction=0.2, num_malicious=1)
    np.testing.assert_allclose(
        ROBUST_RULES.get("median")(WITH_OUTLIER, COUNTS, settings).value, flat(aggregate_median(results))
    )
    np.testing.assert_allclose(
        ROBUST_RULES.get("trimmed_mean")(WITH_OUTLIER, COUNTS, settings).value,
        flat(aggregate_trimmed_avg(results, 0.2)),
    )
    np.testing.assert_allclose(
        ROBUST_RULES.get("krum")(WITH_OUTLIER, COUNTS, settings).value, flat(aggregate_krum(results, 1, 0))
    )
    multi = RobustSettings(num_malicious=1, num_selected=3)
    equal = [(arrays, 1) for arrays, _ in results]  # Multi-Krum's kept answers count alike (Flower's: by count)
    np.testing.assert_allclose(
        ROBUST_RULES.get("multi_krum")(WITH_OUTLIER, COUNTS, multi).value, flat(aggregate_krum(equal, 1, 3))
    )


def test_multi_krum_gives_a_kept_answer_no_more_weight_for_claiming_more_samples() -> None:
    honest = 1.0 + 0.01 * RNG.standard_normal((8, 50))
    inside = honest.mean(axis=0) - 0.005  # close to the others, so Krum keeps it; its claim is 20x theirs
    values = np.vstack([honest, inside, inside])
    claims = np.array([2500.0] * 8 + [50000.0] * 2)
    fused = ROBUST_RULES.get("multi_krum")(values, claims, RobustSettings(num_malicious=2))
    kept = fused.client_weights > 0
    assert kept[8:].all() and kept.sum() == 8
    np.testing.assert_allclose(fused.client_weights[kept], 1 / 8)
    np.testing.assert_allclose(fused.value, values[kept].mean(axis=0))


def test_robust_average_keeps_names_shapes_and_dtype() -> None:
    models = [
        {"w": row[:20].reshape(4, 5).astype(np.float32), "b": row[20:].astype(np.float32)} for row in WITH_OUTLIER
    ]
    fused, shares = robust_average(models, COUNTS.tolist(), "median")
    assert list(fused) == ["w", "b"] and fused["w"].shape == (4, 5) and fused["w"].dtype == np.float32
    np.testing.assert_allclose(fused["w"], np.median(np.stack([m["w"] for m in models]), axis=0), rtol=1e-6)
    assert shares[4] == 0.0


def test_logit_rules_resist_an_outlying_client_and_trust_ignores_a_confident_liar() -> None:
    labels = RNG.integers(0, 3, size=40)
    honest = np.stack([np.eye(3)[labels] * 2.0 + 0.1 * RNG.standard_normal((40, 3)) for _ in range(4)])
    liar = np.eye(3)[(labels + 1) % 3] * 50.0  # confident and always wrong
    values = np.concatenate([honest, liar[None]])
    mean = LOGIT_AGGREGATIONS.get("mean")(values, labels, RobustSettings())
    assert np.mean(mean.logits.argmax(1) == labels) < 0.1
    for rule in (*ROBUST, "trust"):
        fused = LOGIT_AGGREGATIONS.get(rule)(values, labels, RobustSettings(num_malicious=1))
        assert np.mean(fused.logits.argmax(1) == labels) == 1.0, rule
        # Coordinate-wise rules still take the liar's value where it is typical (a zero logit), never its lie.
        assert fused.client_weights[4] < (0.2 if rule in ("median", "trimmed_mean") else 1e-12), rule
    # Without labels trust falls back on the precision measured nowhere: every client counts the same.
    unknown = LOGIT_AGGREGATIONS.get("trust")(values, np.full(40, -1), RobustSettings())
    np.testing.assert_allclose(unknown.client_weights, np.full(5, 0.2))
    # A sample without its label (-1) measures nobody: with half of them labelled, the labelled half fuses as it
    # does alone, by the trust measured on that half.
    half = np.where(np.arange(40) < 20, labels, -1)
    np.testing.assert_allclose(
        LOGIT_AGGREGATIONS.get("trust")(values, half, RobustSettings()).logits[:20],
        LOGIT_AGGREGATIONS.get("trust")(values[:, :20], labels[:20], RobustSettings()).logits,
    )


def test_aggregation_is_a_checked_strategy_setting() -> None:
    with pytest.raises(ConfigError, match="strategy.aggregation"):
        config("fedmd", aggregation="nosuch")
    with pytest.raises(ConfigError, match="strategy.aggregation"):
        config("fedavg", aggregation="trust")  # no labels in weight space
    with pytest.raises(ConfigError, match="strategy.trim_fraction"):
        config("fedavg", aggregation="trimmed_mean", trim_fraction=0.5)


@pytest.mark.parametrize(
    ("strategy", "attack", "aggregation"),
    [
        ("fedavg", "scaled_update", "median"),
        ("feddf", "scaled_update", "trimmed_mean"),
        ("fedet", "gaussian_update", "krum"),
        ("dsfl", "scaled_logits", "krum"),
        ("fedmd", "confident_wrong", "trust"),
    ],
)
def test_strategies_pick_a_robust_rule_by_config(strategy: str, attack: str, aggregation: str) -> None:
    adversary: dict[str, Any] = {"name": attack, "fraction": 0.25}
    adversary |= {"scale": 100.0} if attack.startswith("scaled") else {}  # the others read no scale
    settings = {"server_epochs": 1} if strategy != "fedavg" else {}
    settings |= {"distill_epochs": 1} if strategy == "feddf" else {}
    plain = run_inprocess(config(strategy, adversary, **settings), federation(strategy).data).rounds[-1]
    settings |= {"num_malicious": 1} if aggregation == "krum" else {}  # the other rules read no count
    robust = run_inprocess(
        config(strategy, adversary, aggregation=aggregation, **settings), federation(strategy).data
    ).rounds[-1]
    assert plain["n_malicious_accepted"] == robust["n_malicious_accepted"] == 1
    assert plain["malicious_weight_share"] > 0.2
    assert robust["malicious_weight_share"] < plain["malicious_weight_share"]


def test_fedgems_weightings_that_confidence_cannot_buy() -> None:
    from fl_kd.kd.fedgems.selection import select_teacher

    labels = torch.tensor([0, 1, 2, 0])
    honest = torch.eye(3)[labels] * 2.0
    inflated = torch.eye(3)[labels] * 200.0  # right, but scaled: entropy ~ 0
    sometimes = torch.eye(3)[torch.tensor([0, 2, 0, 1])] * 2.0  # right on the first sample only
    logits = torch.stack([honest, inflated, sometimes])
    fedgems = select_teacher(logits, labels, "inverse_entropy").weights
    uniform = select_teacher(logits, labels, "correct_uniform").weights
    trusted = select_teacher(logits, labels, "trusted_inverse_entropy").weights
    assert fedgems[1].min() > 0.99  # the inflated client takes (almost) all the weight
    torch.testing.assert_close(uniform[:, 1:], torch.tensor([[0.5] * 3, [0.5] * 3, [0.0] * 3]))
    assert uniform[:, 0].tolist() == pytest.approx([1 / 3] * 3)
    assert trusted[2, 0] < trusted[0, 0] and trusted[2, 1:].sum() == 0
    strategy = config("fedgems", weighting="correct_uniform").strategy
    assert isinstance(strategy, FedGEMSConfig)
    assert strategy.weighting == "correct_uniform"


@pytest.mark.parametrize(
    ("config_class", "rules"),
    [
        ("fl_kd.kd.fedavg.config:FedAvgConfig", ROBUST_RULES),
        ("fl_kd.kd.feddf.config:FedDFConfig", ROBUST_RULES),
        ("fl_kd.kd.fedet.config:FedETConfig", ROBUST_RULES),
        ("fl_kd.kd.fedmd.config:FedMDConfig", LOGIT_AGGREGATIONS),
        ("fl_kd.kd.dsfl.config:DSFLConfig", LOGIT_AGGREGATIONS),
    ],
)
def test_every_strategy_declares_its_aggregation_settings_once_and_passes_them_on(
    config_class: str, rules: Registry
) -> None:
    import importlib
    from dataclasses import fields

    from fl_kd.kd.robust import AggregationConfig

    module, name = config_class.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, AggregationConfig)
    assert {f.name for f in fields(AggregationConfig)} <= {f.name for f in fields(cls)}
    config = cls(aggregation="multi_krum", num_malicious=2, num_selected=3)
    settings = config.robust_settings()
    assert (settings.trim_fraction, settings.num_malicious, settings.num_selected) == (0.2, 2, 3)
    assert cls(aggregation="trimmed_mean", trim_fraction=0.1).robust_settings().trim_fraction == 0.1
    # A rule's parameter given with another rule would be dropped: refused, naming the rules that read it.
    with pytest.raises(ConfigError, match=r"trim_fraction=0.1 is used only with strategy.aggregation=trimmed_mean"):
        cls(aggregation="multi_krum", trim_fraction=0.1)
    with pytest.raises(ConfigError, match=r"num_malicious=2 is used only with strategy.aggregation=krum or multi"):
        cls(aggregation="median", num_malicious=2)
    unknown = next(rule for rule in ("trust", "mean_of_medians") if rule not in rules.names())
    with pytest.raises(ConfigError, match="strategy.aggregation"):
        cls(aggregation=unknown)
    with pytest.raises(ConfigError, match=r"strategy\.trim_fraction must be in \[0, 0.5\)"):
        cls(trim_fraction=0.5)
    if hasattr(config, "trust_power"):  # the logit rules' own parameter reaches them too
        assert cls(aggregation="trust", trust_power=2.0).robust_settings().trust_power == 2.0
        with pytest.raises(ConfigError, match=r"trust_power=2.0 is used only with strategy.aggregation=trust"):
            cls(trust_power=2.0)


def test_trusted_weighting_measures_accuracy_where_the_label_is_known() -> None:
    # Two held-out samples (label -1: every answering client counts as right there) and eight labelled ones, on
    # which the second client is always confidently wrong. Its accuracy is 0, not the held-out share.
    from fl_kd.kd.fedgems.selection import select_teacher

    truth = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    honest = torch.eye(3)[truth] * 2.0
    liar = torch.eye(3)[(truth + 1) % 3] * 20.0
    labels = torch.where(torch.arange(10) < 2, -1, truth)
    trusted = select_teacher(torch.stack([honest, liar]), labels, "trusted_inverse_entropy")
    assert trusted.weights[1, :2].max() < 1e-4 and trusted.weights[0, :2].min() > 1 - 1e-4
    assert trusted.logits[:2].argmax(dim=1).tolist() == truth[:2].tolist()
    assert trusted.weights[1, 2:].sum() == 0  # wrong on every labelled sample: no weight there, as before


@pytest.mark.parametrize("rule", ["krum", "multi_krum"])
def test_krum_warns_where_too_few_answers_void_its_guarantee(rule: str) -> None:
    settings = RobustSettings(num_malicious=1)
    with pytest.warns(RuntimeWarning, match="guarantee against num_malicious colluders does not hold"):
        ROBUST_RULES.get(rule)(HONEST[:3], COUNTS[:3], settings)  # K = 3 <= 2 * 1 + 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ROBUST_RULES.get(rule)(WITH_OUTLIER, COUNTS, settings)  # K = 5 > 4: no warning


def test_multi_krum_keeping_every_answer_says_it_is_the_plain_mean() -> None:
    everyone = RobustSettings(num_malicious=1, num_selected=WITH_OUTLIER.shape[0])
    with pytest.warns(RuntimeWarning, match="keeps them all, which is the plain mean"):
        ROBUST_RULES.get("multi_krum")(WITH_OUTLIER, COUNTS, everyone)


def test_num_selected_without_multi_krum_is_refused() -> None:
    """It was dropped without a word: a run that looked like Multi-Krum's and was the rule named."""
    with pytest.raises(ConfigError, match="strategy.num_selected=3 is used only with strategy.aggregation=multi_krum"):
        AggregationConfig(aggregation="median", num_selected=3).check_aggregation(["mean", "median", "multi_krum"])
