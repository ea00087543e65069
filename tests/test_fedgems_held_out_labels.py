"""``held_out_server_labels``: the server trains on the held-out slice's labels, and the clients learn nothing there
from the server, so the trust fitted on their answers there still reads answers they never learnt the labels of."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.fedgems import FedGEMSClient, FedGEMSServer, SelectiveDistillServer, ServerDistillConfig
from fl_kd.kd.roles import Instruction
from fl_kd.models import build_model
from tests.kd_configs import tiny_config

SHAPE = (1, 8, 8)
C = 4
SLICE: dict[str, Any] = {"correctness": "held_out", "held_out_fraction": 0.5, "reliability_on": "held_out"}


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=generator), torch.randint(0, C, (n,), generator=generator)


def _server(**options: Any) -> SelectiveDistillServer:
    config = ServerDistillConfig(epochs=1, batch_size=8, lr=0.05, unlabelled_trust="learned", **SLICE, **options)
    return SelectiveDistillServer(
        build_model("cnn_small", SHAPE, C, seed=0), *_data(40, 0), config, seed=3, unlabelled_x=_data(10, 1)[0]
    )


def _client() -> DistillClient:
    config = ClientTrainConfig(local_epochs=1, batch_size=10, lr=0.1, distill_epochs=20, epsilon=1.0)
    return DistillClient(0, build_model("cnn_tiny", SHAPE, C, seed=0), *_data(30, 5), *_data(20, 6), config, seed=1)


def _cross_entropy(client: DistillClient, at: slice) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(client.model.eval()(client.transfer_x[at]), client.transfer_y[at]))


def test_the_server_memorises_the_slice_only_with_the_option_and_then_reports_no_figure_read_there() -> None:
    # Random labels can only be memorised: the server gets the slice right only if it trains on its labels.
    servers = {on: _server(held_out_server_labels=on) for on in (False, True)}
    for server in servers.values():
        for round in range(30):
            server.distill(round, {})
    accuracy = {}
    for on, server in servers.items():
        held = torch.from_numpy(server.options.held_out_positions)
        predictions = server._predict(server.transfer_x[held]).argmax(dim=1)  # noqa: SLF001 - the shown model
        accuracy[on] = float((predictions == server.transfer_y[held]).double().mean())
    assert accuracy[True] > 0.9 and accuracy[False] < 0.6
    figures = {on: server.distill(30, {}).round_metrics() for on, server in servers.items()}
    assert "held_out_accuracy" in figures[False] and "untrusted_accuracy" in figures[False]
    assert "held_out_accuracy" not in figures[True] and "untrusted_accuracy" not in figures[True]
    assert figures[True]["n_untrusted"] == 20  # where no client was right: still counted


def test_the_clients_are_told_to_leave_the_slice_out_instead_of_learning_it_label_free() -> None:
    plain, trained = (_server(held_out_server_labels=on) for on in (False, True))
    held = trained.options.held_out_positions
    instruction = FedGEMSServer(trained).evaluate_instruction(1, 0)
    np.testing.assert_array_equal(instruction.arrays[kd.WITHHELD_POSITIONS], held)
    assert kd.LABEL_FREE_POSITIONS not in instruction.arrays
    instruction = FedGEMSServer(plain).evaluate_instruction(1, 0)
    assert kd.WITHHELD_POSITIONS not in instruction.arrays and kd.LABEL_FREE_POSITIONS in instruction.arrays


def test_a_client_learns_nothing_at_withheld_positions() -> None:
    # With epsilon=1 distillation is pure cross-entropy on the transfer labels (random, so only memorised).
    uniform = np.zeros((20, C), np.float32)
    first, second = slice(0, 10), slice(10, 20)
    before = _cross_entropy(_client(), first)
    client = _client()
    client.distill(0, uniform, withheld=np.arange(10))
    assert _cross_entropy(client, second) < before - 0.3  # it memorised the other half
    assert _cross_entropy(client, first) > before - 0.05  # and not this one
    everything = _client()
    everything.distill(0, uniform)
    assert _cross_entropy(everything, first) < before - 0.3  # the same distillation without the mask does
    with pytest.raises(ValueError, match="positions"):
        _client().distill(0, uniform, withheld=np.array([20]))


def test_the_anchor_keeps_no_server_logit_at_withheld_positions() -> None:
    role = FedGEMSClient(_client(), anchor=1.0)
    server_logits = np.arange(20 * C, dtype=np.float32).reshape(20, C) / 100.0
    role.receive(0, Instruction({kd.SERVER_LOGITS: server_logits, kd.WITHHELD_POSITIONS: np.array([3, 7, 11])}))
    assert role.anchor_set is not None
    positions, logits = role.anchor_set
    kept = [p for p in range(20) if p not in (3, 7, 11)]
    assert positions.tolist() == kept
    torch.testing.assert_close(logits, torch.from_numpy(server_logits[kept]))
    with pytest.raises(ValueError, match="positions"):
        role.receive(0, Instruction({kd.SERVER_LOGITS: server_logits, kd.WITHHELD_POSITIONS: np.array([3, 3])}))


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # no held-out slice at all
        {"correctness": "held_out"},  # a slice that is distilled from the clients and judges the server
        {"correctness": "held_out", "unlabelled_trust": "class_reliability"},  # trust measured on the labelled part
    ],
)
def test_the_option_is_refused_where_the_slice_does_more_than_measure_the_clients(overrides: dict[str, Any]) -> None:
    settings = {"transfer": {"labelled": 60, "unlabelled": 40}, **overrides}
    with pytest.raises(ConfigError, match="held_out_server_labels needs"):
        tiny_config(held_out_server_labels=True, **settings)
