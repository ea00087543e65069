"""FLTrust (``strategy.aggregation=fltrust``): the rule against the server's own update, the root trainer that
makes that update on the labelled transfer set, and what it does to the attacks it is meant to stop."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fl_kd.config import ConfigError, from_mapping
from fl_kd.kd.adversary import AttackMetricsServer, ColludingServer
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.fedavg import FedAvgServer
from fl_kd.kd.fedavg.root import RootUpdate
from fl_kd.kd.federation import build_federation
from fl_kd.kd.robust_weights import flatten, fltrust, fltrust_average
from fl_kd.kd.runner import run_inprocess
from tests.test_adversary import ONE_TIER, config, federation

ROOT = np.array([1.0, 0.0, 0.0])


def test_a_reversed_update_gets_no_weight_and_a_boosted_one_no_more_length() -> None:
    updates = np.array([[2.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [300.0, 300.0, 0.0]])
    fused = fltrust(updates, ROOT)
    assert fused.client_weights[1] == 0.0
    cos = 1 / np.sqrt(2)
    np.testing.assert_allclose(fused.client_weights, [1 / (1 + cos), 0.0, cos / (1 + cos)])
    # Each kept update has the root's length: the boosted one moves the result no further than the honest one.
    expected = (1.0 * np.array([1.0, 0, 0]) + cos * np.array([cos, cos, 0])) / (1 + cos)
    np.testing.assert_allclose(fused.value, expected)
    assert np.linalg.norm(fused.value) <= np.linalg.norm(ROOT) + 1e-12


def test_no_trusted_update_means_no_step() -> None:
    fused = fltrust(np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), ROOT)
    assert not fused.value.any() and not fused.client_weights.any()
    assert not fltrust(np.ones((2, 3)), np.zeros(3)).value.any()  # a server that did not move trusts no one


def test_fltrust_average_works_on_updates_from_the_global_weights() -> None:
    reference = {"w": np.full((2, 2), 5.0, dtype=np.float32)}
    models = [{"w": reference["w"] + 1.0}, {"w": reference["w"] - 1.0}]
    fused, shares = fltrust_average(models, reference, {"w": reference["w"] + 0.5})
    np.testing.assert_allclose(fused["w"], reference["w"] + 0.5)  # the aligned update, at the root's length
    np.testing.assert_allclose(shares, [1.0, 0.0])
    assert fused["w"].dtype == np.float32


def test_the_server_trains_its_root_update_on_the_labelled_transfer_set() -> None:
    cfg = config("fedavg", aggregation="fltrust")
    fed = federation("fedavg")
    server = get_algorithm("fedavg").build_server(cfg, fed)
    assert isinstance(server, FedAvgServer) and isinstance(server.root, RootUpdate)
    trainer = server.root.trainer
    assert trainer.train_x.shape[0] == fed.num_labelled == 60
    # As many SGD steps as a client's mean: the epochs scale with the clients' sets against the root set's 60.
    batch, epochs = trainer.config.batch_size, fed.tiers[0].local_epochs
    steps = [epochs * math.ceil(fed.client_idx[cid].size / batch) for cid in range(fed.num_clients)]
    assert trainer.config.local_epochs == round(sum(steps) / len(steps) / math.ceil(60 / batch)) > 1
    published = server.published[server.architecture]
    first = server.root(1, published)
    assert any(not np.array_equal(first[name], published[name]) for name in published)
    again = server.root(1, published)  # from the same weights, the same update
    assert all(np.array_equal(first[name], again[name]) for name in published)


def test_fltrust_is_a_weight_rule() -> None:
    with pytest.raises(ConfigError, match="fltrust"):
        config("dsfl", aggregation="fltrust")
    with pytest.raises(ConfigError, match="FedDF also fuses"):
        config("feddf", aggregation="fltrust")


@pytest.mark.parametrize("attack", ["sign_flip", "scaled_update"])
def test_fltrust_gives_reversed_and_boosted_updates_less_weight_than_the_mean_does(attack: str) -> None:
    adversary = {"name": attack, "fraction": 0.25, "scale": 5.0}
    plain = run_inprocess(config("fedavg", adversary), federation("fedavg").data).rounds[-1]
    trusted = run_inprocess(config("fedavg", adversary, aggregation="fltrust"), federation("fedavg").data).rounds[-1]
    assert plain["malicious_weight_share"] > 0.2
    assert trusted["malicious_weight_share"] < plain["malicious_weight_share"]
    if attack == "sign_flip":
        assert trusted["malicious_weight_share"] == 0.0


def private_config(**transfer: int) -> ExperimentConfig:
    """The FLTrust config of these tests, with the server's private labelled set (``transfer.server_private``)."""
    cfg = config("fedavg", {"name": "fltrust_adaptive", "fraction": 0.5}, aggregation="fltrust")
    return dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, **transfer))


def test_the_servers_private_set_is_drawn_apart_from_every_other_party() -> None:
    cfg = private_config(server_private=50, unlabelled=30)
    fed = build_federation(cfg)
    assert fed.server_idx.size == 50 and fed.num_labelled == 60 and fed.unlabelled_idx.size == 30
    others = [fed.transfer_idx, fed.unlabelled_idx, *fed.client_idx]
    assert not set(fed.server_idx.tolist()).intersection(np.concatenate(others).tolist())
    assert len(np.unique(fed.data.y_train[torch.from_numpy(fed.server_idx)])) == fed.data.num_classes  # stratified
    # Without it the split is the one of every earlier run: the same transfer set, unlabelled part and no server set.
    plain = build_federation(private_config(unlabelled=30))
    assert plain.server_idx.size == 0
    assert np.array_equal(plain.transfer_idx, fed.transfer_idx)
    assert np.array_equal(plain.unlabelled_idx, fed.unlabelled_idx)
    with pytest.raises(ConfigError, match="transfer.server_private"):
        build_federation(private_config(server_private=10**7))


def test_a_private_root_is_trained_on_the_servers_set_and_the_colluders_approximate_it_on_the_public_one() -> None:
    cfg = private_config(server_private=60)
    fed = build_federation(cfg)
    server = get_algorithm("fedavg").build_server(cfg, fed)
    assert isinstance(server, ColludingServer) and isinstance(server.server, AttackMetricsServer)
    inner = server.server.server
    assert isinstance(inner, FedAvgServer) and inner.root is not None and inner.root.private
    server_x, server_y = fed.server_data()
    assert torch.equal(inner.root.trainer.train_x, server_x) and torch.equal(inner.root.trainer.train_y, server_y)
    # The colluders' replica: the same training, on the labelled transfer set they know.
    replica = server.server_training
    assert replica is not None and not replica.private
    assert torch.equal(replica.trainer.train_x, fed.transfer_x)
    published = server.train_instruction(1, 0).arrays
    theirs = flatten(inner.root(1, published), sorted(published)) - flatten(published, sorted(published))
    ours = flatten(replica(1, published), sorted(published)) - flatten(published, sorted(published))
    cosine = ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))
    assert 0.0 < cosine < 0.999  # near the server's update, never equal to it
    # And the same training on every other labelled sample, twice, to measure how far such an estimate agrees.
    assert server.calibration is not None
    halves = [half.trainer.train_y for half in server.calibration]
    assert torch.equal(halves[0], fed.transfer_y[0::2]) and torch.equal(halves[1], fed.transfer_y[1::2])
    # With no labelled transfer set they know nothing of the server's data, and estimate its direction instead.
    blind = private_config(server_private=60, labelled=0, unlabelled=60)
    server = get_algorithm("fedavg").build_server(blind, build_federation(blind))
    assert isinstance(server, ColludingServer) and server.server_training is None and server.calibration is None


def test_a_private_root_alone_is_labelled_data_enough_for_fltrust() -> None:
    cfg = private_config(server_private=40, labelled=0, unlabelled=60)
    last = run_inprocess(cfg, federation("fedavg").data).rounds[-1]  # the colluders estimate the direction instead
    assert last["server_acc"] > 0.0 and 0.0 <= last["malicious_weight_share"] < 1.0
    with pytest.raises(ConfigError, match="transfer.server_private > 0, or a labelled transfer set"):
        from_mapping(
            ExperimentConfig,
            {
                "device_profile": ONE_TIER,
                "transfer": {"labelled": 0, "unlabelled": 50},
                "strategy": {"name": "fedavg", "aggregation": "fltrust"},
            },
        )


def test_a_private_server_set_that_no_strategy_reads_is_refused() -> None:
    with pytest.raises(ConfigError, match="transfer.server_private=50 is the root data set of FLTrust"):
        from_mapping(
            ExperimentConfig,
            {"device_profile": ONE_TIER, "transfer": {"server_private": 50}, "strategy": {"name": "fedavg"}},
        )
    with pytest.raises(ConfigError, match="strategy 'fedgems' does not use"):
        from_mapping(ExperimentConfig, {"device_profile": ONE_TIER, "transfer": {"server_private": 50}})
