"""Malicious clients (``adversary`` group): who they are, what each behaviour does to an answer, and that the
default leaves every run as it was."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.adversary import (
    ADVERSARIES,
    AdversaryConfig,
    AttackMetricsServer,
    Behaviour,
    MaliciousClient,
    ReportsScreened,
    malicious_clients,
    malicious_of,
)
from fl_kd.kd.adversary.camouflage import SKEW_GAP
from fl_kd.kd.adversary.config import malicious_count
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.kd.roles import Answer, Arrays, DistillClientRole, Instruction, ServerRole
from fl_kd.kd.runner import run_inprocess
from fl_kd.kd.training import confidence, from_wire, to_wire
from fl_kd.simulations.config import experiment_config
from tests.kd_configs import TINY_PROFILE

ONE_TIER = {
    "name": "tiny_one_tier",
    "server_model": "cnn_tiny",
    "tiers": {"only": {"model": "cnn_tiny", "share": 1.0, "local_epochs": 1, "batch_size": 32, "lr": 0.05}},
}


def config(strategy: str = "dsfl", adversary: dict[str, Any] | None = None, **settings: Any) -> ExperimentConfig:
    """4 digits clients, a 60-sample labelled transfer set; weight-sharing strategies get one architecture."""
    profile = ONE_TIER if strategy in ("fedavg", "fedavg_server_model") else TINY_PROFILE
    top = {
        "device_profile": profile,
        "num_clients": 4,
        "transfer": {"labelled": 60},
        "personalised_test_size": 40,
        "seed": 11,
        "adversary": adversary or {},
    }
    return from_mapping(ExperimentConfig, top | {"strategy": {"name": strategy, "rounds": 1, **settings}})


@cache
def federation(strategy: str = "dsfl") -> Federation:
    return build_federation(config(strategy))


def answers(name: str, strategy: str = "dsfl", client_id: int = 0, **params: Any) -> tuple[Answer, Answer, Any]:
    """Client ``client_id``'s honest answer and, from a fresh client, the answer when every client is ``name``."""
    honest_cfg = config(strategy)
    attack_cfg = config(strategy, {"name": name, "fraction": 1.0, **params})
    algorithm = get_algorithm(strategy)
    fed = federation(strategy)
    instruction = algorithm.build_server(honest_cfg, fed).train_instruction(1, client_id)
    honest = algorithm.build_client(honest_cfg, fed, client_id).train(1, instruction)
    malicious = algorithm.build_client(attack_cfg, fed, client_id)
    assert isinstance(malicious, MaliciousClient)
    return honest, malicious.train(1, instruction), instruction


def _dsfl_behaviour(cfg: ExperimentConfig) -> Behaviour:
    """The behaviour of DSFL client 0 under ``cfg``, whose adversary makes every client malicious."""
    client = get_algorithm("dsfl").build_client(cfg, federation(), 0)
    assert isinstance(client, MaliciousClient)
    return client.behaviour


def _unlabelled_behaviour(settings: dict[str, Any]) -> Behaviour:
    """The behaviour ``settings`` describe, built directly on the digits federation's transfer labels: positions
    beyond its labelled part stand for an unlabelled part, which this federation's config does not have (and
    without one, the settings that shape a lie there are refused)."""
    return ADVERSARIES.get(settings["name"])(AdversaryConfig(**settings), 10, federation().transfer_y)


def test_malicious_ids_are_drawn_from_the_seed_alone() -> None:
    assert malicious_clients(0, 20, 0.3) == malicious_clients(0, 20, 0.3)
    assert len(malicious_clients(0, 20, 0.3)) == 6 and len(malicious_clients(0, 20, 0.1)) == 2
    assert len(malicious_clients(0, 4, 0.125)) == 1  # halves round up
    assert malicious_clients(0, 20, 0.0) == () and malicious_clients(0, 20, 1.0) == tuple(range(20))
    assert malicious_clients(0, 20, 0.3) != malicious_clients(1, 20, 0.3)
    # The behaviour does not move the draw: attacks at one fraction corrupt the same clients.
    ids = {malicious_of(config(adversary={"name": name, "fraction": 0.5})) for name in ("label_flip", "free_rider")}
    assert len(ids) == 1 and len(ids.pop()) == 2
    assert malicious_of(config()) == ()


def test_negated_and_scaled_logits_rewrite_the_honest_logits() -> None:
    honest, negated, _ = answers("negated_logits")
    np.testing.assert_array_equal(negated.arrays[kd.LOGITS], -honest.arrays[kd.LOGITS])
    np.testing.assert_array_equal(negated.arrays[kd.POSITIONS], honest.arrays[kd.POSITIONS])
    honest, scaled, _ = answers("scaled_logits", scale=7.0)
    np.testing.assert_allclose(scaled.arrays[kd.LOGITS], 7.0 * honest.arrays[kd.LOGITS], rtol=1e-6)
    assert scaled.arrays[kd.LOGITS].dtype == honest.arrays[kd.LOGITS].dtype == np.float32
    assert scaled.metrics == honest.metrics


def test_random_logits_carry_no_information_at_the_honest_scale() -> None:
    honest, noise, _ = answers("random_logits")
    real, fake = honest.arrays[kd.LOGITS], noise.arrays[kd.LOGITS]
    assert fake.shape == real.shape and fake.dtype == real.dtype
    assert np.mean(fake.argmax(1) == real.argmax(1)) < 0.5
    assert abs(fake.std() - real.std()) < 0.2 * real.std()
    # Seeded by (seed, client, round): the same lie every time.
    np.testing.assert_array_equal(answers("random_logits")[1].arrays[kd.LOGITS], fake)


def test_confident_wrong_is_one_hot_on_a_wrong_class() -> None:
    _, wrong, _ = answers("confident_wrong", confidence=9.0)
    logits, positions = wrong.arrays[kd.LOGITS], wrong.arrays[kd.POSITIONS]
    labels = federation().transfer_y.numpy()[positions]
    assert np.all(logits.max(axis=1) == 9.0) and np.all((logits != 0).sum(axis=1) == 1)
    assert not np.any(logits.argmax(axis=1) == labels)


def test_camouflage_is_right_and_sure_where_labels_check_it_and_wrong_elsewhere() -> None:
    _, camouflaged, _ = answers("camouflage", confidence=9.0)
    logits, positions = camouflaged.arrays[kd.LOGITS], camouflaged.arrays[kd.POSITIONS]
    labels = federation().transfer_y.numpy()[positions]
    assert np.all(logits.max(axis=1) == 9.0) and np.all((logits != 0).sum(axis=1) == 1)
    np.testing.assert_array_equal(logits.argmax(axis=1), labels)
    # Beyond the labelled part no label checks it: one-hot on a class other than its own prediction.
    cfg = config(adversary={"name": "camouflage", "fraction": 1.0, "confidence": 9.0})
    behaviour = _dsfl_behaviour(cfg)
    honest = np.eye(10)[[2, 7, 4]] * 3.0
    unlabelled = np.array([10**6] * 2 + [0])
    out = behaviour.corrupt_logits(honest, unlabelled, np.random.default_rng(0))
    assert np.all(out[:2].argmax(axis=1) != [2, 7])
    assert out[2].argmax() == int(federation().transfer_y[0]) and np.all(out.max(axis=1) == 9.0)
    # With poison_share it lies on that share of the unlabelled rows only and answers the rest honestly.
    behaviour = _unlabelled_behaviour({"name": "camouflage", "fraction": 1.0, "poison_share": 0.25})
    honest = np.random.default_rng(1).normal(size=(2000, 10))
    out = behaviour.corrupt_logits(honest, np.full(2000, 10**6), np.random.default_rng(2))
    lied = ~np.all(out == honest, axis=1)
    assert 0.2 < lied.mean() < 0.3 and np.all(out[lied].max(axis=1) == 10.0)
    # With checked=honest it answers its honest logits where a label checks it too.
    mimic = config(adversary={"name": "camouflage", "fraction": 1.0, "checked": "honest"})
    behaviour = _dsfl_behaviour(mimic)
    positions = np.array([0, 1, 10**6])
    out = behaviour.corrupt_logits(honest[:3], positions, np.random.default_rng(2))
    np.testing.assert_array_equal(out[:2], honest[:2])
    assert out[2].max() == 10.0 and (out[2] != 0).sum() == 1
    # With checked=poisoned it lies on the same share where labels check it as elsewhere, never on the label.
    alike = config(adversary={"name": "camouflage", "fraction": 1.0, "poison_share": 0.25, "checked": "poisoned"})
    behaviour = _dsfl_behaviour(alike)
    labelled = np.arange(2000) % federation().transfer_y.numel()
    out = behaviour.corrupt_logits(honest, labelled, np.random.default_rng(3))
    lied = ~np.all(out == honest, axis=1)
    assert 0.2 < lied.mean() < 0.3
    assert not np.any(out[lied].argmax(axis=1) == honest[lied].argmax(axis=1))
    # With poison_where=uncertain it lies where its own top class leads the least, naming its runner-up there.
    unsure_settings = {"name": "camouflage", "fraction": 1.0, "poison_share": 0.1, "checked": "honest"}
    behaviour = _unlabelled_behaviour(unsure_settings | {"poison_where": "uncertain"})
    out = behaviour.corrupt_logits(honest, np.full(2000, 10**6), np.random.default_rng(4))
    lied = ~np.all(out == honest, axis=1)
    ranked = np.sort(honest, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    assert lied.sum() == 200 and margin[lied].max() <= margin[~lied].min()
    np.testing.assert_array_equal(out[lied].argmax(axis=1), np.argsort(honest[lied], axis=1)[:, -2])
    # With lie_as=swap the same lie keeps its honest logits, the top two swapped: it states the same confidence.
    behaviour = _unlabelled_behaviour(unsure_settings | {"poison_where": "uncertain", "lie_as": "swap"})
    swap = behaviour.corrupt_logits(honest, np.full(2000, 10**6), np.random.default_rng(4))
    np.testing.assert_array_equal(~np.all(swap == honest, axis=1), lied)
    np.testing.assert_array_equal(swap[lied].argmax(axis=1), out[lied].argmax(axis=1))
    np.testing.assert_array_equal(np.sort(swap, axis=1), np.sort(honest, axis=1))
    # With lie_as=quantile it states the lie as sure as its answers at that quantile where labels check it.
    behaviour = _unlabelled_behaviour(unsure_settings | {"poison_where": "uncertain", "lie_as": "quantile"})
    positions = np.r_[np.zeros(400, dtype=np.int64), np.full(2000, 10**6)]
    checked = np.random.default_rng(5).normal(size=(400, 10)) * 2
    stated = behaviour.corrupt_logits(np.r_[checked, honest], positions, np.random.default_rng(4))[400:]
    np.testing.assert_array_equal(stated[lied].argmax(axis=1), out[lied].argmax(axis=1))
    np.testing.assert_allclose(np.exp(stated[lied]).max(axis=1), np.quantile(confidence(checked), 0.75))
    np.testing.assert_allclose(np.exp(stated[lied]).sum(axis=1), 1.0)
    # With lie_as=traded its lies take the confidences of its surest honest answers, which take the lies' own.
    behaviour = _unlabelled_behaviour(unsure_settings | {"poison_where": "uncertain", "lie_as": "traded"})
    trade = behaviour.corrupt_logits(honest, np.full(2000, 10**6), np.random.default_rng(4))
    sure_before, sure_after = confidence(honest), confidence(trade)
    np.testing.assert_allclose(np.sort(sure_after), np.sort(sure_before))
    np.testing.assert_array_equal(trade[lied].argmax(axis=1), out[lied].argmax(axis=1))
    assert sure_after[lied].min() >= np.quantile(sure_before, 0.85) > sure_before[lied].max()
    np.testing.assert_array_equal(trade.argmax(axis=1)[~lied], honest.argmax(axis=1)[~lied])


def test_a_skewed_liar_names_its_honest_class_with_a_wrong_one_a_close_second() -> None:
    """``lie_as=skewed``: every class it names is its honest one, also through the 8-bit wire; its runner-up becomes
    the wrong class, just under the top, and every other logit stays; colluders name the same wrong class."""
    honest = np.random.default_rng(1).normal(size=(2000, 10)) * 3
    unlabelled = np.full(2000, 10**6)
    settings = {"name": "camouflage", "fraction": 1.0, "checked": "honest", "lie_as": "skewed"}
    skewed = _unlabelled_behaviour(settings).corrupt_logits(honest, unlabelled, np.random.default_rng(4))
    top = honest.argmax(axis=1)
    np.testing.assert_array_equal(skewed.argmax(axis=1), top)
    changed = skewed != honest  # one class raised to the gap under the top (none where one was there already)
    assert np.all(changed.sum(axis=1) <= 1) and changed.sum() > 1900 and not np.any(changed[np.arange(2000), top])
    rows, wrong = np.nonzero(changed)
    np.testing.assert_allclose(skewed[rows, wrong], honest[rows, top[rows]] - SKEW_GAP)
    wire = from_wire(to_wire(torch.from_numpy(skewed), np.uint8))  # the wrong class stays under the top there
    assert np.all(wire[rows, wrong] < wire[rows, top[rows]])
    assert np.mean(wrong == np.argsort(honest, axis=1)[rows, -2]) < 0.2  # a drawn wrong class, not its runner-up
    # With poison_where=uncertain the wrong class is its own runner-up, raised.
    unsure = _unlabelled_behaviour(settings | {"poison_where": "uncertain"})
    runner_up = unsure.corrupt_logits(honest, unlabelled, np.random.default_rng(4))
    second = np.argsort(honest, axis=1)[:, -2]
    np.testing.assert_array_equal(np.argsort(runner_up, axis=1)[:, -2], second)
    np.testing.assert_allclose(
        runner_up[np.arange(2000), second], np.maximum(honest[np.arange(2000), second], honest.max(axis=1) - SKEW_GAP)
    )
    # Coordinated, two colluders with their own streams raise the same wrong class wherever they agree on the top.
    pair = [
        _unlabelled_behaviour(settings | {"coordinated": True}).corrupt_logits(
            honest, unlabelled, np.random.default_rng(seed)
        )
        for seed in (5, 6)
    ]
    np.testing.assert_array_equal(pair[0], pair[1])


def test_coordinated_liars_poison_the_same_samples_with_the_same_wrong_class() -> None:
    """Two colluders with their own random streams and honest answers lie on the same rows with the same class."""
    settings = {"name": "camouflage", "fraction": 1.0, "poison_share": 0.3, "checked": "honest"}
    positions = np.arange(60, 3060)  # the unlabelled part (no label checks it)
    honest = np.random.default_rng(1).normal(size=(3000, 10))
    honest[:, 0] += 5.0  # both answer class 0 almost everywhere, so they agree on what "wrong" means
    outs = {}
    for coordinated in (False, True):
        behaviour = _unlabelled_behaviour(settings | {"coordinated": coordinated})
        outs[coordinated] = [
            behaviour.corrupt_logits(honest + 0.01 * k, positions, np.random.default_rng(10 + k)) for k in (0, 1)
        ]
    (a, b), lied = outs[True], []
    for out, base in ((a, honest), (b, honest + 0.01)):
        lied.append(~np.all(out == base, axis=1))
    np.testing.assert_array_equal(lied[0], lied[1])  # the same rows lied on
    assert 0.25 < lied[0].mean() < 0.35
    np.testing.assert_array_equal(a[lied[0]].argmax(axis=1), b[lied[0]].argmax(axis=1))  # the same wrong class
    assert not np.any(a[lied[0]].argmax(axis=1) == honest[lied[0]].argmax(axis=1))  # never its own prediction
    # The shared wrong class is uniform over the other classes (no class after the own one drawn twice as often).
    own = np.zeros(30000, dtype=np.int64)
    named = behaviour.wrong_classes(own, np.random.default_rng(0), np.arange(30000))
    share = np.bincount(named, minlength=10)[1:] / own.size
    assert np.abs(share - 1 / 9).max() < 0.01, share
    # The same clients without coordination draw their own rows and classes: they agree only by chance.
    c, d = outs[False]
    mine, theirs = ~np.all(c == honest, axis=1), ~np.all(d == honest + 0.01, axis=1)
    assert (mine & theirs).mean() < 0.15 and not np.array_equal(mine, theirs)
    # confident_wrong follows the shared draw too.
    cfg = config(adversary={"name": "confident_wrong", "fraction": 1.0, "coordinated": True})
    behaviour = _dsfl_behaviour(cfg)
    first = behaviour.corrupt_logits(honest, positions, np.random.default_rng(0))
    second = behaviour.corrupt_logits(honest, positions, np.random.default_rng(1))
    np.testing.assert_array_equal(first, second)


def test_targeted_relabels_source_as_target_and_swaps_its_answers() -> None:
    cfg = config(adversary={"name": "targeted", "fraction": 1.0, "source": 3, "target": 8})
    client = get_algorithm("dsfl").build_client(cfg, federation(), 0)
    assert isinstance(client, MaliciousClient)
    assert isinstance(client.honest, DistillClientRole)
    honest_y = federation().client_data(0)[1]
    poisoned_y = client.honest.client.train_y
    assert torch.equal(poisoned_y[honest_y != 3], honest_y[honest_y != 3]) and not (poisoned_y == 3).any()
    assert (poisoned_y[honest_y == 3] == 8).all() and (honest_y == 3).any()
    logits = np.eye(10)[[3, 3, 5]] * 4.0
    out = client.behaviour.corrupt_logits(logits, np.array([10**6] * 3), np.random.default_rng(0))
    assert out.argmax(axis=1).tolist() == [8, 8, 5]


def test_label_flip_trains_on_flipped_labels() -> None:
    cfg = config(adversary={"name": "label_flip", "fraction": 1.0})
    client = get_algorithm("dsfl").build_client(cfg, federation(), 2)
    assert isinstance(client, MaliciousClient)
    assert isinstance(client.honest, DistillClientRole)
    assert torch.equal(client.honest.client.train_y, 9 - federation().client_data(2)[1])


def test_free_rider_answers_without_training() -> None:
    cfg = config()
    fresh = get_algorithm("dsfl").build_client(cfg, federation(), 1)
    assert isinstance(fresh, DistillClientRole)
    honest, stale, instruction = answers("free_rider", client_id=1)
    untrained = fresh.client.public_logits(instruction.arrays[kd.POSITIONS])
    np.testing.assert_array_equal(stale.arrays[kd.LOGITS], untrained)
    assert stale.metrics[kd.TRAIN_SAMPLES] == 0.0 < honest.metrics[kd.TRAIN_SAMPLES]
    _, random, _ = answers("free_rider", client_id=1, free_rider_mode="random")
    assert not np.array_equal(random.arrays[kd.LOGITS], untrained)


@pytest.mark.parametrize("strategy", ["dsfl", "fedavg"])
def test_an_absent_client_sends_nothing_the_server_could_use(strategy: str) -> None:
    """The reference for a defence: the liars' answers never reach the server, whatever it shares."""
    honest, absent, _ = answers("absent", strategy)
    assert honest.arrays and not absent.arrays
    rows = run_inprocess(config(strategy, {"name": "absent", "fraction": 0.5}), federation(strategy).data).rounds
    assert [(row["n_rejected"], row["n_malicious_accepted"]) for row in rows] == [(2, 0)]


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("sign_flip", {"scale": 3.0}),
        ("scaled_update", {"scale": 3.0}),
        ("gaussian_update", {"noise_std": 0.5}),
        ("free_rider", {}),
    ],
)
def test_weight_attacks_rewrite_the_update(name: str, settings: dict[str, Any]) -> None:
    honest, attacked, instruction = answers(name, "fedavg", **settings)
    sent = [key for key in honest.arrays if key != kd.NUM_EXAMPLES]
    np.testing.assert_array_equal(attacked.arrays[kd.NUM_EXAMPLES], honest.arrays[kd.NUM_EXAMPLES])
    for key in sent:
        base = instruction.arrays[key].astype(np.float64)
        update, sent_update = honest.arrays[key] - base, attacked.arrays[key] - base
        expected = {"sign_flip": -3.0 * update, "scaled_update": 3.0 * update, "free_rider": 0.0 * update}
        if name in expected:
            np.testing.assert_allclose(sent_update, expected[name], atol=1e-5)
        elif sent_update.size > 100:
            assert abs(sent_update.std() - 0.5) < 0.1


def test_behaviours_that_do_not_fit_the_strategy_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="sign_flip corrupts weights"):
        config("dsfl", {"name": "sign_flip", "fraction": 0.5})
    with pytest.raises(ConfigError, match="negated_logits corrupts logits"):
        config("fedavg", {"name": "negated_logits", "fraction": 0.5})
    with pytest.raises(ConfigError, match="adversary.fraction"):
        config(adversary={"name": "none", "fraction": 0.5})
    with pytest.raises(ConfigError, match="adversary.name"):
        config(adversary={"name": "nosuch"})
    with pytest.raises(ConfigError, match="different classes"):
        config(adversary={"name": "targeted", "source": 2, "target": 2})
    with pytest.raises(ConfigError, match="cannot be coordinated"):
        config(adversary={"name": "camouflage", "poison_where": "uncertain", "coordinated": True})
    with pytest.raises(ConfigError, match="adversary.poison_where"):
        config(adversary={"name": "camouflage", "poison_where": "nowhere"})
    with pytest.raises(ConfigError, match="adversary.lie_as"):
        config(adversary={"name": "camouflage", "lie_as": "loudly"})
    with pytest.raises(ValueError, match="no class"):
        get_algorithm("dsfl").build_client(
            config(adversary={"name": "targeted", "fraction": 1.0, "target": 10}), federation(), 0
        )


@pytest.mark.parametrize(
    ("strategy", "adversary", "transfer", "dropped"),
    [
        ("dsfl", {"name": "label_flip", "scale": 5.0}, {}, "adversary.scale=5.0 .*label_flip does not read it"),
        ("dsfl", {"name": "none", "confidence": 3.0}, {}, "adversary.confidence=3.0 .*none does not read it"),
        ("fedavg", {"name": "sign_flip", "confidence": 5.0}, {}, r"adversary.confidence=5.0 .*default \(10.0\)"),
        ("fedavg", {"name": "alie", "noise_std": 2.0}, {}, "alie does not read it"),
        ("dsfl", {"name": "camouflage", "lie_quantile": 0.5}, {"unlabelled": 20}, "only adversary.lie_as=quantile"),
        ("dsfl", {"name": "camouflage", "poison_share": 0.2}, {}, "transfer.unlabelled=0 a label checks every"),
        ("dsfl", {"name": "camouflage", "checked": "honest", "confidence": 5.0}, {}, "adversary.confidence=5.0"),
        (
            "dsfl",
            {"name": "camouflage", "checked": "poisoned", "lie_as": "swap", "confidence": 5.0},
            {"unlabelled": 20},
            "one-hot only with adversary.lie_as=one_hot or checked=truth",
        ),
        ("dsfl", {"name": "free_rider", "noise_std": 2.0}, {}, "only a free rider in mode random that shares"),
        ("dsfl", {"name": "free_rider", "noise_std": 2.0, "free_rider_mode": "random"}, {}, "shares weights"),
        ("fedavg", {"name": "free_rider", "noise_std": 2.0}, {}, "adversary.noise_std=2.0"),
    ],
)
def test_a_setting_the_behaviour_does_not_read_is_refused(
    strategy: str, adversary: dict[str, Any], transfer: dict[str, int], dropped: str
) -> None:
    profile = ONE_TIER if strategy == "fedavg" else TINY_PROFILE
    top = {"device_profile": profile, "num_clients": 4, "transfer": {"labelled": 60, **transfer}}
    fraction = 0.0 if adversary["name"] == "none" else 0.5
    with pytest.raises(ConfigError, match=dropped):
        from_mapping(
            ExperimentConfig,
            top | {"adversary": {"fraction": fraction, **adversary}, "strategy": {"name": strategy, "rounds": 1}},
        )


def test_the_settings_each_behaviour_reads_are_accepted() -> None:
    """Where the behaviour reads it (the dropped-setting rule refuses nothing that acts)."""
    unlabelled = {"transfer": {"labelled": 60, "unlabelled": 20}}
    for adversary in (
        {"name": "scaled_logits", "scale": 5.0},
        {"name": "confident_wrong", "confidence": 3.0, "coordinated": True},
        {"name": "targeted", "source": 3, "target": 4},
        {"name": "camouflage", "poison_share": 0.2, "lie_as": "quantile", "lie_quantile": 0.5, "checked": "honest"},
        {"name": "camouflage", "poison_share": 0.2, "checked": "poisoned", "poison_where": "uncertain"},
    ):
        top = {"device_profile": TINY_PROFILE, "num_clients": 4, **unlabelled}
        from_mapping(
            ExperimentConfig, top | {"adversary": {"fraction": 0.5, **adversary}, "strategy": {"name": "dsfl"}}
        )
    # Lying where every answer is checked is possible only by lying there too.
    config(adversary={"name": "camouflage", "fraction": 0.5, "checked": "poisoned", "poison_share": 0.2})
    for adversary in (
        {"name": "scaled_update", "scale": 3.0},
        {"name": "gaussian_update", "noise_std": 0.5},
        {"name": "free_rider", "free_rider_mode": "random", "noise_std": 0.5},
        {"name": "alie", "z": 1.0},
    ):
        config("fedavg", {"fraction": 0.5, **adversary})


def test_none_wraps_nothing_and_an_empty_attack_changes_no_number() -> None:
    cfg = config()
    algorithm = get_algorithm("dsfl")
    assert not isinstance(algorithm.build_client(cfg, federation(), 0), MaliciousClient)
    assert not isinstance(algorithm.build_server(cfg, federation()), AttackMetricsServer)
    honest = run_inprocess(cfg, federation().data).rounds
    empty = run_inprocess(config(adversary={"name": "negated_logits", "fraction": 0.0}), federation().data).rounds
    extra = {"n_malicious_accepted", "malicious_weight_share", "wall_seconds"}
    assert [{k: v for k, v in r.items() if k not in extra} for r in empty] == [
        {k: v for k, v in r.items() if k != "wall_seconds"} for r in honest
    ]
    assert empty[0]["n_malicious_accepted"] == 0 and empty[0]["malicious_weight_share"] == 0.0


class _ScreeningServer(ServerRole):
    """A server whose screen left out clients 1 (honest) and 3 (malicious) of the last round."""

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        return Instruction({})

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        return None

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        return {"server_loss": 0.5}

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        return Instruction({})

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return 0.0

    def screened_clients(self) -> frozenset[int] | None:
        return frozenset({1, 3})


class _ServerWithoutScreen(_ScreeningServer):
    """The same server with its screen off: it says so with None, and no screened count is reported."""

    def screened_clients(self) -> frozenset[int] | None:
        return None


def test_the_clients_a_screen_left_out_are_counted_as_liars_and_honest_by_id() -> None:
    """The wrapper knows the malicious ids, the server does not: a screen's record is read from whom it left out."""
    figures = AttackMetricsServer(_ScreeningServer(), frozenset({3, 4})).aggregate(1, {})
    assert figures == {"server_loss": 0.5, "n_malicious_accepted": 0, "n_malicious_screened": 1, "n_honest_screened": 1}
    assert isinstance(_ScreeningServer(), ReportsScreened)
    assert "n_honest_screened" not in AttackMetricsServer(_ServerWithoutScreen(), frozenset({3})).aggregate(1, {})


def test_every_behaviour_is_registered() -> None:
    assert set(ADVERSARIES.names()) == {
        "none",
        "absent",
        "label_flip",
        "random_logits",
        "negated_logits",
        "scaled_logits",
        "confident_wrong",
        "camouflage",
        "skewed_colluders",
        "free_rider",
        "targeted",
        "sign_flip",
        "scaled_update",
        "gaussian_update",
        "alie",
        "min_max",
        "min_sum",
        "fltrust_adaptive",
    }


CONF = Path(__file__).resolve().parents[1] / "conf" / "adversary"


@pytest.mark.parametrize("name", ADVERSARIES.names())
def test_each_behaviour_has_a_group_file_that_sets_only_what_differs(name: str) -> None:
    path = CONF / f"{name}.yaml"
    settings = yaml.safe_load(path.read_text())
    assert settings.pop("defaults") == [f"/schema/adversary/{name}@_here_", "_self_"]
    defaults = to_mapping(AdversaryConfig())
    assert set(settings) <= set(defaults), f"{path.name}: {set(settings) - set(defaults)} are no AdversaryConfig fields"
    assert not {key for key, value in settings.items() if value == defaults[key]}, f"{path.name} repeats a default"
    strategy = "fedavg" if ADVERSARIES.get(name).kind == "weights" else "fedgems"
    overrides = [f"adversary={name}", f"strategy={strategy}"] + ["device_profile=homogeneous"] * (strategy == "fedavg")
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        composed = experiment_config(compose(config_name="config", overrides=overrides))
    assert composed.adversary.name == name and (composed.adversary.fraction > 0) == (name != "none")
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(ADVERSARIES.names())


def test_a_malicious_client_is_scored_as_the_honest_one_on_both_test_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation is the honest half's, its personal figure (a personal model, a label prior) included."""
    cfg = config("fedgems", {"name": "random_logits", "fraction": 1.0})
    malicious = get_algorithm("fedgems").build_client(cfg, federation("fedgems"), 0)
    assert isinstance(malicious, MaliciousClient)
    monkeypatch.setattr(malicious.honest, "evaluate", lambda x, y: 0.25)
    monkeypatch.setattr(malicious.honest, "evaluate_personal", lambda x, y: 0.75)
    x, y = federation("fedgems").personalised_test(0)
    assert (malicious.evaluate(x, y), malicious.evaluate_personal(x, y)) == (0.25, 0.75)
    assert malicious.evaluated_model() is malicious.honest.evaluated_model()


def test_the_malicious_count_rounds_halves_up_as_the_fraction_is_written() -> None:
    """``round(fraction * num_clients)``, halves up, in decimals: 0.29 of 50 is 14.5, so 15 (in binary, 14.4999)."""
    assert [malicious_count(50, 0.29), malicious_count(25, 0.58), malicious_count(90, 0.35)] == [15, 15, 32]
    assert [malicious_count(20, 0.3), malicious_count(20, 0.5), malicious_count(20, 0.1)] == [6, 10, 2]
    assert malicious_count(10, 0.04) == 0 and malicious_count(10, 0.05) == 1 and malicious_count(3, 1.0) == 3


def test_a_late_liar_answers_honestly_before_its_first_round_and_lies_from_it() -> None:
    """``from_round``: the attacker that builds trust first, then spends it (a screen pools evidence over rounds)."""
    fed = federation()
    algorithm = get_algorithm("dsfl")
    honest_cfg = config(rounds=3)
    late_cfg = config(adversary={"name": "negated_logits", "fraction": 1.0, "from_round": 2}, rounds=3)
    server = algorithm.build_server(honest_cfg, fed)
    honest, late = algorithm.build_client(honest_cfg, fed, 0), algorithm.build_client(late_cfg, fed, 0)
    assert isinstance(late, MaliciousClient) and late.from_round == 2
    for round in (1, 2):
        instruction = server.train_instruction(round, 0)
        expected, sent = honest.train(round, instruction), late.train(round, instruction)
        same = all(np.array_equal(expected.arrays[k], sent.arrays[k]) for k in expected.arrays)
        assert same == (round == 1), round


@pytest.mark.parametrize(
    ("adversary", "expected"),
    [
        ({"name": "label_flip", "from_round": 2}, "only a behaviour that rewrites its own answers can start late"),
        ({"name": "absent", "from_round": 2}, "only a behaviour that rewrites its own answers can start late"),
        ({"name": "negated_logits", "from_round": 4}, r"is after the last round \(strategy.rounds=3\)"),
        ({"name": "negated_logits", "from_round": 0}, "adversary.from_round"),
    ],
)
def test_a_late_start_that_cannot_happen_is_refused(adversary: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config(adversary={"fraction": 0.5, **adversary}, rounds=3)
