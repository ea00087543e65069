"""A client takes in only the arrays its phase names (``ClientRole.instruction_names``), in both runtimes: the
ClientApp refuses any other name before an array decodes, the in-process runner before the client sees it; and
every algorithm's server sends only names its clients take in."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedgems.extensions import fedgems_plus
from fl_kd.kd.roles import Instruction, Phase
from fl_kd.kd.runner import build_parties, run_round
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config
from tests.test_fedmd_common import peer_config
from tests.test_protocol import _lying, decodes  # noqa: F401 - the fixture

PEERS = ["fedavg", "fedavg_server_model", "feddf", "fedet", "fedmd", "dsfl"]


def _fedgems_plus(**settings: Any) -> ExperimentConfig:
    """Every FedGEMS extension (its instructions carry the most names), on the tiny digits run."""
    strategy = to_mapping(fedgems_plus()) | {"rounds": 2, "server_epochs": 1, "server_batch_size": 32}
    strategy |= {"unlabelled_per_round": 20, "logits_dtype": "float32"} | settings
    cfg = peer_config("fedgems")
    return from_mapping(ExperimentConfig, to_mapping(cfg) | {"strategy": strategy})


def _peer(name: str) -> ExperimentConfig:
    return from_mapping(ExperimentConfig, to_mapping(peer_config("fedmd")) | {"strategy": {"name": name, "rounds": 2}})


CONFIGS: dict[str, Callable[[], ExperimentConfig]] = {
    "fedgems": tiny_config,
    "fedgems_plus": _fedgems_plus,
    "fedgems_plus_server_labels": functools.partial(_fedgems_plus, held_out_server_labels=True),
    **{name: functools.partial(_peer, name) for name in PEERS},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_server_instruction_carries_only_names_its_clients_take_in(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = CONFIGS[name]()
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    sent: dict[Phase, set[str]] = {"train": set(), "evaluate": set()}
    with caplog.at_level(logging.WARNING, logger="fl_kd.kd.runner"):
        for round in (1, 2):
            for client in clients:
                train = server.train_instruction(round, client.client_id)
                assert set(train.arrays) <= client.instruction_names("train")
                sent["train"] |= set(train.arrays)
            run_round(cfg, round, federation, server, clients)
            for client in clients:
                knowledge = server.evaluate_instruction(round, client.client_id)
                assert set(knowledge.arrays) <= client.instruction_names("evaluate")
                sent["evaluate"] |= set(knowledge.arrays)
    assert "failed" not in caplog.text  # no client refused anything in either round
    assert sent["train"] and sent["evaluate"]
    if name.startswith("fedgems_plus"):  # the options that add names did add them
        withheld = name.endswith("server_labels")
        assert {kd.UNLABELLED_POSITIONS, kd.UNLABELLED_LOGITS} <= sent["evaluate"]
        assert (kd.WITHHELD_POSITIONS in sent["evaluate"]) == withheld
        assert (kd.LABEL_FREE_POSITIONS in sent["evaluate"]) != withheld


def test_the_runner_refuses_an_unasked_array_before_the_client_sees_it(caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config()
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    original = server.evaluate_instruction
    received: list[int] = []

    def with_extra(round: int, client_id: int) -> Instruction:
        instruction = original(round, client_id)
        if client_id == 0:
            instruction.arrays["surprise"] = np.zeros(3, np.float32)
        return instruction

    def spy(client: Any) -> Any:
        receive = client.receive

        def counted(round: int, instruction: Instruction) -> dict[str, float]:
            received.append(client.client_id)
            return receive(round, instruction)

        return counted

    server.evaluate_instruction = with_extra  # type: ignore[method-assign]
    for client in clients:
        client.receive = spy(client)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="fl_kd.kd.runner"):
        metrics = run_round(cfg, 1, federation, server, clients)
    assert "client 0 failed: ValueError: instruction refused: arrays that were not asked for: surprise" in caplog.text
    assert received == [1, 2, 3]  # the others took in the server's knowledge; client 0 never saw the message
    assert metrics["n_eval_dropped"] == 1


def _message(node: int, phase: Phase, arrays: dict[str, Array]) -> Message:
    config = ConfigRecord({kd.SERVER_ROUND: 1, **({kd.DISTILL: True} if phase == "evaluate" else {})})
    content = RecordDict({kd.ARRAYS: ArrayRecord(arrays), kd.CONFIG: config})
    return Message(content, dst_node_id=node, message_type=phase)


@pytest.mark.parametrize("phase", ["train", "evaluate"])
@pytest.mark.parametrize("strategy", ["fedgems", "fedavg"])
def test_the_clientapp_refuses_an_unasked_array_before_any_array_decodes(
    phase: Phase,
    strategy: str,
    decodes: list[tuple[int, ...]],  # noqa: F811 - the fixture
) -> None:
    cfg = tiny_config() if strategy == "fedgems" else _peer(strategy)
    grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
    node, context = next(iter(grid.contexts.items()))
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    if phase == "evaluate":  # the server has knowledge to send once it has learnt from a round
        run_round(cfg, 1, federation, server, clients)
    asked = server.train_instruction(1, 0) if phase == "train" else server.evaluate_instruction(1, 0)
    arrays = {name: Array(value) for name, value in asked.arrays.items()}
    decodes.clear()
    with pytest.raises(ValueError, match="not asked for: surprise"):
        client_app(_message(node, phase, arrays | {"surprise": _lying((4,))}), context)
    assert decodes == []
    assert kd.CLIENT_STATE not in context.state  # nothing of the message reached the client
    # The same message without the stranger is taken in.
    reply = client_app(_message(node, phase, arrays), context)
    assert reply.content.metric_records[kd.METRICS][kd.PARTITION_ID] == 0
