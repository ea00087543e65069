"""The FedGEMS strategy and ClientApp over Flower messages (in-process grid): agreement with the reference
runner, and screening of every kind of bad client answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedgems.extensions import EXTENSIONS
from fl_kd.kd.protocol import RUN_CONFIG_KEY
from fl_kd.kd.runner import build_parties, run_inprocess
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config as _config


def _run(cfg: ExperimentConfig, tamper: Callable[[Message, Message], list[Message]] | None = None):  # noqa: ANN202
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, tamper)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=cfg.strategy.rounds)
    return strategy


NODE_OF_CLIENT0 = 1000  # LoopbackGrid gives partition p the node id 1000 + 7 p


def test_a_payload_claiming_another_identity_changes_nothing() -> None:
    cfg = _config(rounds=1)
    honest, lying = _run(cfg), _run(cfg, _claims_another_client)
    assert _without_time(lying.history) == _without_time(honest.history)


def _without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fraction_fit": 0.5, "logits_dtype": "float16", "server_ema": 0.9, "client_tail_average": 0.5},
        {"correctness": "held_out", "distill_correct": True, "client_finetune_epochs": 1, "client_max_grad_norm": 0.5},
        {"client_finetune_epochs": 1, "client_personal": True, "client_personal_prox": 0.1, "rounds": 2},
        {"client_finetune_epochs": 1, "client_personal": True, "client_tail_average": 0.5, "rounds": 2},
        {
            "client_finetune_epochs": 1,
            "client_keep_distilled": True,
            "client_tail_average": 0.5,
            "fraction_fit": 0.5,
            "rounds": 2,
        },
        {
            "transfer": {"labelled": 60, "unlabelled": 40},
            "unlabelled_trust": "class_reliability",
            "unlabelled_per_round": 25,
            "fraction_fit": 0.5,
            "logits_dtype": "float16",
        },
        {
            "transfer": {"labelled": 60, "unlabelled": 40},
            "unlabelled_trust": "class_reliability",
            "unlabelled_per_round": 20,
            "client_unlabelled": True,
            "correctness": "held_out",
            "reliability_on": "held_out",
            "evaluation": {"test_samples": 100, "fraction_clients": 0.5},
            "rounds": 3,
        },
        # Answers and broadcasts as quantised log-probabilities (uint8; uint5 packed), with the anchor that keeps
        # the latter.
        *(
            {
                "transfer": {"labelled": 60, "unlabelled": 40},
                "unlabelled_trust": "class_reliability",
                "unlabelled_per_round": 20,
                "client_unlabelled": True,
                "client_anchor": 1.0,
                "logits_dtype": dtype,
                "rounds": 2,
            }
            for dtype in ("uint8", "uint5")
        ),
        # strategy=fedgems_plus, every extension, on a transfer set this small.
        {
            **{key: value for extension in EXTENSIONS for key, value in extension.settings.items()},
            "transfer": {"labelled": 60, "unlabelled": 40},
            "unlabelled_per_round": 20,
            "rounds": 2,
        },
    ],
)
def test_flower_messages_reproduce_the_reference_runner(overrides: dict[str, Any]) -> None:
    cfg = _config(**overrides)
    strategy = _run(cfg)
    reference = run_inprocess(cfg)
    assert _without_time(strategy.history) == _without_time(reference.rounds)
    assert all(row["n_rejected"] == 0 and row["n_missing"] == 0 for row in strategy.history)


# -- bad input from client 0 in round 1 ------------------------------------------------------------------------------
def _replace_arrays(
    make: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> Callable[[Message, Message], list[Message]]:
    """Client 0's first answer with its arrays made from its honest logits."""

    def tamper(message: Message, reply: Message) -> list[Message]:
        if not _is_first_train_of_client0(message, reply):
            return [reply]
        arrays = make(reply.content.array_records["arrays"]["logits"].numpy())
        bad = RecordDict(
            {
                "arrays": ArrayRecord({name: Array(value) for name, value in arrays.items()}),
                "metrics": reply.content["metrics"],
            }
        )
        return [Message(bad, reply_to=message)]

    return tamper


def _replace_logits(make: Callable[[np.ndarray], np.ndarray]) -> Callable[[Message, Message], list[Message]]:
    return _replace_arrays(lambda logits: {"logits": make(logits)})


def _is_first_train_of_client0(message: Message, reply: Message) -> bool:
    return (
        message.metadata.message_type == "train"
        and int(message.content["config"]["server-round"]) == 1  # type: ignore[arg-type]  # Flower types config values as a union
        and message.metadata.dst_node_id == NODE_OF_CLIENT0
    )


def _drop(message: Message, reply: Message) -> list[Message]:
    return [] if _is_first_train_of_client0(message, reply) else [reply]


def _duplicate(message: Message, reply: Message) -> list[Message]:
    return [reply, reply] if _is_first_train_of_client0(message, reply) else [reply]


def _error(message: Message, reply: Message) -> list[Message]:
    if _is_first_train_of_client0(message, reply):
        return [Message(Error(code=1, reason="client crashed"), reply_to=message)]
    return [reply]


def _from_unknown_node(message: Message, reply: Message) -> list[Message]:
    """The answer arrives from a node that was never discovered (Flower's metadata says who sent it)."""
    if not _is_first_train_of_client0(message, reply):
        return [reply]
    # What a SuperLink would record for a message from another node (the Metadata class has no setter for it).
    reply.metadata.__dict__["_src_node_id"] = 999_999
    return [reply]


def _claims_another_client(message: Message, reply: Message) -> list[Message]:
    """Client 0's answer says it is client 1: the payload's claim is ignored, the metadata decides."""
    if not _is_first_train_of_client0(message, reply):
        return [reply]
    metrics = MetricRecord(dict(reply.content.metric_records["metrics"]) | {"partition-id": 1})
    content = RecordDict({"arrays": reply.content["arrays"], "metrics": metrics})
    return [Message(content, reply_to=message)]


def _nan(logits: np.ndarray) -> np.ndarray:
    out = logits.copy()
    out[0, 0] = np.nan
    return out


def _inf(logits: np.ndarray) -> np.ndarray:
    out = logits.copy()
    out[-1, -1] = np.inf
    return out


BAD_ANSWERS = {
    "nan logits": (_replace_logits(_nan), 1),
    "inf logits": (_replace_logits(_inf), 1),
    "wrong shape": (_replace_logits(lambda x: x[:, :-1].copy()), 1),
    "wrong dtype": (_replace_logits(lambda x: x.astype(np.float64)), 1),
    "integer logits": (_replace_logits(lambda x: x.astype(np.int32)), 1),
    "a row missing": (_replace_logits(lambda x: x[:-1].copy()), 1),
    "positions of its own": (_replace_arrays(lambda x: {"logits": x, "positions": np.arange(len(x)) + 1}), 1),
    "duplicate replies": (_duplicate, 2),
    "error reply": (_error, 1),
    "reply from an unknown node": (_from_unknown_node, 1),
}


@pytest.fixture(scope="module")
def without_client0() -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The run in which client 0's first answer never arrives: what every rejected answer must reduce to."""
    strategy = _run(_config(rounds=1), _drop)
    return strategy.history, strategy.server.server.state_dict()["model"]


def test_missing_reply_is_counted(without_client0: tuple[list[dict[str, Any]], dict[str, torch.Tensor]]) -> None:
    history, _ = without_client0
    assert history[0]["n_missing"] == 1
    assert history[0]["n_rejected"] == 0


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_is_dropped_and_never_reaches_the_server_model(
    case: str, without_client0: tuple[list[dict[str, Any]], dict[str, torch.Tensor]]
) -> None:
    tamper, rejected = BAD_ANSWERS[case]
    strategy = _run(_config(rounds=1), tamper)
    row = strategy.history[0]
    assert row["n_rejected"] == rejected
    assert np.isfinite(row["server_acc"])
    # The server learnt exactly what it learns when client 0 is absent: nothing of the bad answer got in.
    reference_history, reference_model = without_client0
    model = strategy.server.server.state_dict()["model"]
    assert all(torch.equal(model[name], reference_model[name]) for name in reference_model)
    assert row["server_acc"] == reference_history[0]["server_acc"]


def test_the_configured_value_bound_screens_answers_in_both_runtimes() -> None:
    cfg = _config(rounds=1, max_abs_value=1e-6)  # every honest logit is beyond it
    flower, inprocess = _run(cfg).history, run_inprocess(cfg).rounds
    assert flower[0]["n_rejected"] == inprocess[0]["n_rejected"] == cfg.num_clients
    # and every client refuses the server's logits, beyond the bound too: counted alike in both runtimes
    assert flower[0]["n_eval_dropped"] == inprocess[0]["n_eval_dropped"] == cfg.num_clients
    assert _without_time(flower) == _without_time(inprocess)


@pytest.mark.parametrize("strategy", ["fedgems", "fedmd", "dsfl"])
def test_a_logit_sender_checks_answers_against_the_configured_bound_not_the_default(strategy: str) -> None:
    """The generic screen reads ``max_abs_value``; so must each algorithm's own check, or a wider bound is
    silently the default's and a narrower one is met only by the generic screen."""
    base = _config(rounds=1)
    cfg = from_mapping(
        ExperimentConfig, to_mapping(base) | {"max_abs_value": 1e5, "strategy": {"name": strategy, "rounds": 1}}
    )
    federation = build_federation(cfg)
    server, clients = build_parties(cfg, federation)
    answer = clients[0].train(1, server.train_instruction(1, 0)).arrays
    assert answer[kd.LOGITS].dtype == np.float32
    for value, refused in ((2e4, False), (2e5, True)):
        logits = answer[kd.LOGITS].copy()
        logits[0, 0] = value
        reason = server.check_answer(1, 0, {**answer, kd.LOGITS: logits})
        assert (reason is not None and "bound 100000" in reason) if refused else reason is None
