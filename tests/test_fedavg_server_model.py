"""FedAvg of the server model: every client, whatever its tier, trains the server model; device cost counts it."""

from __future__ import annotations

import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.kd.cost import training_flops_per_sample
from fl_kd.kd.fedavg import NUM_EXAMPLES
from fl_kd.kd.federation import build_federation, sample_clients
from fl_kd.kd.weights import model_arrays
from tests import test_fedavg as shared


def test_heterogeneous_tiers_all_train_the_server_model_alike_in_both_runtimes() -> None:
    cfg = shared.weight_config("fedavg_server_model", shared.MIXED_PROFILE)
    rows = shared.assert_runtimes_agree(cfg)
    federation = build_federation(cfg)
    data = federation.data
    flops = training_flops_per_sample("cnn_small", tuple(data.input_shape), data.num_classes)
    for row in rows:
        sampled = sample_clients(cfg.num_clients, cfg.strategy.fraction_fit, cfg.seed, row["round"])
        for tier in {federation.tiers[cid] for cid in sampled}:
            members = [cid for cid in sampled if federation.tiers[cid] == tier]
            # The tier's epochs, the server model's FLOPs (not the tier's cnn_tiny).
            samples = [tier.local_epochs * federation.client_idx[cid].size for cid in members]
            assert row[f"client_flops_{tier.name}"] == pytest.approx(flops * sum(samples) / len(samples))
            assert row[f"client_uplink_bytes_{tier.name}"] == row["uplink_bytes"] / len(sampled)


def test_the_sampled_clients_receive_the_new_global_server_model() -> None:
    cfg = shared.weight_config("fedavg_server_model", shared.MIXED_PROFILE, fraction_fit=0.5, rounds=1)
    server = shared.assert_sampled_clients_hold(cfg, lambda server, _cid: model_arrays(server.server_model))
    assert server.client_model(0) == "cnn_small"


def test_an_answer_with_the_tier_model_is_dropped() -> None:
    cfg = shared.weight_config("fedavg_server_model", shared.MIXED_PROFILE, rounds=1)
    reference = shared.run_flower(cfg, shared.drop_client0)
    tier_model = model_arrays(torch.nn.Conv2d(1, 8, 3))

    def tier_weights(arrays: dict) -> dict:  # a client that trained something else than the server model
        return {**tier_model, NUM_EXAMPLES: arrays[NUM_EXAMPLES]}

    strategy = shared.run_flower(cfg, shared.replace_answer(tier_weights))
    assert strategy.history[0]["n_rejected"] == 1
    shared.assert_same_state(shared.state(strategy.server.server_model), shared.state(reference.server.server_model))


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigError, match="strategy.momentum"):
        shared.weight_config("fedavg_server_model", momentum=1.0)
