"""Vertical FL over Flower messages: the ServerApp loop and ClientApp against the in-process loop (``run_vfl``),
bad input from parties, roles and sample alignment, and one real ``flwr run`` simulation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from hydra import compose, initialize_config_module
from torch import Tensor

from fl_kd.clients.vfl_app import app as client_app
from fl_kd.clients.vfl_app import load_party
from fl_kd.config import from_mapping
from fl_kd.simulations.flower_launcher import superlink_processes
from fl_kd.simulations.vfl import run_experiment
from fl_kd.simulations.vfl_schema import load_config
from fl_kd.strategies.vfl import VFLServer
from fl_kd.vfl import build_experiment, run_vfl
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.experiment import prepare_data
from fl_kd.vfl.protocol import (
    APPLY_AND_EMBED,
    ATTACK_RESULTS,
    CONFIG_KEY,
    EMBED,
    LOSS_AND_GRADIENTS,
    SAMPLE_IDS,
    TRAIN_LABELS,
    encode_config,
    party_role,
)
from tests.flower_loopback import LoopbackGrid

Tamper = Callable[[Message, Message], list[Message]]


def vfl_config(
    attacks: dict[str, dict[str, Any]] | None = None, attacker_party: int = 0, **groups: dict[str, Any]
) -> VFLRunConfig:
    """breast_cancer with 455 training samples: batches of 128 give 4 batches per epoch; 2 epochs, seed 3.

    ``groups`` replace whole config groups (``defence={"name": "gaussian", ...}``), except ``training``, which
    changes single keys.
    """
    training = {"epochs": 2, "batch_size": 128, **groups.pop("training", {})}
    config = {"seed": 3, "attacker_party": attacker_party, "training": training, "attack": attacks or {}, **groups}
    return from_mapping(VFLRunConfig, config)


BASE = vfl_config()


def _flower(cfg: VFLRunConfig, tamper: Tamper | None = None) -> tuple[dict[str, Any], LoopbackGrid]:
    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {CONFIG_KEY: encode_config(cfg)}, tamper)
    return VFLServer(cfg).run(grid), grid


def _flower_states(grid: LoopbackGrid, num_feature_parties: int) -> list[dict[str, Any]]:
    """Each party's state as its ClientApp left it in ``context.state``: feature parties by id, then the label party."""
    by_role: dict[int, dict[str, Any]] = {}
    for context in grid.contexts.values():
        role = party_role(context.node_config, num_feature_parties)
        by_role[num_feature_parties if role.is_label else role.party_id] = load_party(context).state_dict()
    return [by_role[k] for k in sorted(by_role)]


def _assert_same_state(left: Any, right: Any, path: str = "state") -> None:
    if isinstance(left, dict):
        assert sorted(left, key=str) == sorted(right, key=str), path
        for key in left:
            _assert_same_state(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), path
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same_state(a, b, f"{path}[{index}]")
    elif isinstance(left, Tensor):
        assert torch.equal(left, right), path
    else:
        assert left == right, path


# -- equivalence with the in-process loop ---------------------------------------------------------------------------
DLI: dict[str, dict[str, Any]] = {"direct_label_inference": {}}
CASES = {
    "no defence, three attacks": vfl_config(
        {"direct_label_inference": {}, "norm_scoring": {}, "passive_model_completion": {"steps": 50}}
    ),
    "Gaussian noise": vfl_config(DLI, defence={"name": "gaussian", "params": {"scale": 0.01}}),
    "Laplace noise, clipped": vfl_config(
        DLI, defence={"name": "laplace", "params": {"scale": 0.01, "clip_norm": 0.05}}
    ),
    "discrete SGD": vfl_config({"norm_scoring": {}}, defence={"name": "discrete_sgd", "params": {"bin_numbers": 6}}),
    "MID bottleneck": vfl_config(DLI, defence={"name": "mid", "params": {"weight": 0.01}}),
    "DCAE": vfl_config(DLI, defence={"name": "dcae", "params": {"bin_numbers": 8, "epochs": 1, "num_train": 30_000}}),
    "three batches per message": vfl_config(DLI, training={"batches_per_message": 3}),
    "randomised labels": vfl_config(
        {"adaptive_label_inference": {}}, defence={"name": "randomised_label", "params": {"epsilon": 1.0}}
    ),
    "Marvell": vfl_config({"gradient_clustering": {}}, defence={"name": "marvell", "params": {"power_ratio": 1.0}}),
    "CoAE with noise": vfl_config(
        DLI, defence={"name": "coae_noise", "params": {"scale": 0.005, "epochs": 1, "num_train": 30_000}}
    ),
    "two feature parties, label party without features": vfl_config(
        {"norm_scoring": {}, "passive_model_completion": {"steps": 50}},
        vfl_split={"label_party_features": False},
        vfl_model={"top": "mlp"},
        attacker_party=1,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flower_run_reproduces_run_vfl(case: str) -> None:
    cfg = CASES[case]
    flower, _ = _flower(cfg)
    reference = run_vfl(cfg)
    assert flower["mp"] == reference["mp"]
    assert flower["auc"] == reference["auc"]
    assert flower["train_loss"] == reference["train_loss"]
    assert flower["attacks"] == reference["attacks"]
    assert flower["skipped_batches"] == reference["skipped_batches"] == 0
    assert flower["num_train"] == 455 and flower["mp"] > 0.8


def test_evaluating_every_epoch_reports_mp_and_changes_nothing() -> None:
    plain, _ = _flower(BASE)
    evaluated, _ = _flower(vfl_config(training={"evaluate_every": 1}))
    assert [row["epoch"] for row in evaluated["evaluations"]] == [1]  # the last epoch's MP is the final one
    assert 0.5 < evaluated["evaluations"][0]["mp"] <= 1.0
    assert evaluated["mp"] == plain["mp"] and evaluated["train_loss"] == plain["train_loss"]


# -- bad input: one batch goes wrong, nothing else may change ------------------------------------------------------
def _targets(message: Message, message_type: str) -> bool:
    """The exchange of epoch 0, batch 1 (an embedding request may also carry the previous batch's gradients)."""
    types = (EMBED, APPLY_AND_EMBED) if message_type == EMBED else (message_type,)
    if message.metadata.message_type not in types:
        return False
    config = message.content["config"]
    return int(config["epoch"]) == 0 and 1 in [int(b) for b in config["batches"]]  # type: ignore[arg-type, union-attr]


def _replace_array(message_type: str, key: str, make: Callable[[np.ndarray], np.ndarray]) -> Tamper:
    def tamper(message: Message, reply: Message) -> list[Message]:
        if not _targets(message, message_type) or reply.has_error():
            return [reply]
        content = RecordDict(
            {name: record for name, record in reply.content.items() if name != "arrays"}
            | {
                "arrays": ArrayRecord(
                    {
                        name: Array(make(array.numpy())) if name == key else array
                        for name, array in reply.content.array_records["arrays"].items()
                    }
                )
            }
        )
        return [Message(content, reply_to=message)]

    return tamper


def _with_nan(array: np.ndarray) -> np.ndarray:
    out = array.copy()
    out[0, 0] = np.nan
    return out


def _drop(message: Message, reply: Message) -> list[Message]:
    return [] if _targets(message, EMBED) else [reply]


def _error(message: Message, reply: Message) -> list[Message]:
    if _targets(message, EMBED):
        return [Message(Error(code=1, reason="feature party crashed"), reply_to=message)]
    return [reply]


BAD_EMBEDDINGS: dict[str, tuple[Tamper, str]] = {
    "NaN embedding": (_replace_array(EMBED, "emb.1", _with_nan), "NaN"),
    "wrong-shape embedding": (_replace_array(EMBED, "emb.1", lambda x: x[:, :-1].copy()), "shape"),
    "missing reply": (_drop, "no reply"),
    "error reply": (_error, "feature party crashed"),
}


def _in_process_reference(fail: str) -> tuple[float, list[dict[str, Any]]]:
    """MP and final states of the in-process run in which feature party 0 fails at epoch 0, batch 1.

    ``fail="embed"``: it embeds, then fails to deliver, so the batch is skipped. ``fail="apply"``: it refuses
    its gradient, after the label party has stepped.
    """
    experiment = build_experiment(BASE)
    party = experiment.feature_parties[0]
    calls = {"embed": 0, "apply": 0}
    embed, apply = party.embed, party.apply_gradient

    def failing_embed(sample_ids: Any) -> Tensor:
        calls["embed"] += 1
        out = embed(sample_ids)
        if fail == "embed" and calls["embed"] == 2:
            raise ConnectionError("lost")
        return out

    def failing_apply(sample_ids: Any, grad: Tensor) -> None:
        calls["apply"] += 1
        if fail == "apply" and calls["apply"] == 2:
            raise ValueError("refused")
        apply(sample_ids, grad)

    party.embed = failing_embed  # type: ignore[method-assign]
    party.apply_gradient = failing_apply  # type: ignore[method-assign]
    history = experiment.train()
    assert len(history.skipped_batches) == (fail == "embed") and len(history.failed_updates) == (fail == "apply")
    states = [party.state_dict(), experiment.label_party.state_dict()]
    return experiment.evaluate()["accuracy"], states


@pytest.fixture(scope="module")
def skipped_batch_reference() -> tuple[float, list[dict[str, Any]]]:
    return _in_process_reference("embed")


@pytest.mark.parametrize("case", list(BAD_EMBEDDINGS))
def test_bad_or_missing_embedding_skips_the_batch_and_corrupts_nothing(
    case: str,
    skipped_batch_reference: tuple[float, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tamper, reason = BAD_EMBEDDINGS[case]
    results, grid = _flower(BASE, tamper)
    # Batch 1's embedding request also carried batch 0's gradient: without a usable reply the server cannot know
    # it was applied (here it was) and counts it as not applied; the models are not affected by the count.
    lost_reply = case in ("missing reply", "error reply")
    assert results["skipped_batches"] == 1 and results["failed_updates"] == lost_reply
    if lost_reply:
        assert [(f["epoch"], f["batch"]) for f in results["failed"]] == [(1, 0)]
    assert results["skipped"][0]["epoch"] == 1 and results["skipped"][0]["batch"] == 1
    assert reason in results["skipped"][0]["reason"]
    assert "epoch 1 batch 1 skipped" in caplog.text
    # Every party ends exactly where the run that never had batch 1 ends: nothing of it got in anywhere.
    mp, states = skipped_batch_reference
    _assert_same_state(_flower_states(grid, 1), states)
    assert results["mp"] == mp


def test_nan_gradient_is_refused_by_the_feature_party() -> None:
    tamper = _replace_array(LOSS_AND_GRADIENTS, "grad.0.1", _with_nan)
    results, grid = _flower(BASE, tamper)
    assert results["skipped_batches"] == 0
    assert results["failed_updates"] == 1
    failure = results["failed"][0]
    assert (failure["epoch"], failure["batch"], failure["party"]) == (1, 1, 0)
    assert "NaN" in failure["reason"]
    # The feature party kept its model; the label party had stepped, as in the in-process loop.
    mp, states = _in_process_reference("apply")
    _assert_same_state(_flower_states(grid, 1), states)
    assert results["mp"] == mp


# -- attack scoring: a bad reply leaves the attacks unscored, and the run completes ------------------------------------
def _spoil_scoring(message_type: str, spoil: Callable[[Message, Message], list[Message]]) -> Tamper:
    def tamper(message: Message, reply: Message) -> list[Message]:
        return spoil(message, reply) if message.metadata.message_type == message_type else [reply]

    return tamper


def _results_with_ap(ap: Any) -> Callable[[Message, Message], list[Message]]:
    def spoil(message: Message, reply: Message) -> list[Message]:
        results = json.loads(str(reply.content.config_records["config"]["results"]))
        results["direct_label_inference"]["ap"] = ap
        return [Message(RecordDict({"config": ConfigRecord({"results": json.dumps(results)})}), reply_to=message)]

    return spoil


def _with_float_labels(message: Message, reply: Message) -> Message:
    labels = reply.content.array_records["arrays"]["labels"].numpy()
    return Message(RecordDict({"arrays": ArrayRecord({"labels": Array(labels.astype(np.float64))})}), reply_to=message)


SCORING_FAULTS: dict[str, tuple[Tamper, list[str], dict[str, int], str]] = {
    "the attacker crashes": (
        _spoil_scoring(ATTACK_RESULTS, lambda m, r: [Message(Error(code=1, reason="attacker crashed"), reply_to=m)]),
        ["direct_label_inference", "norm_scoring"],
        {"error reply": 1},
        "attacker crashed",
    ),
    "an AP out of range": (
        _spoil_scoring(ATTACK_RESULTS, _results_with_ap(7.0)),
        ["direct_label_inference"],
        {"unusable attack result": 1},
        "ap is 7.0",
    ),
    "float labels": (
        _spoil_scoring(TRAIN_LABELS, lambda m, r: [_with_float_labels(m, r)]),
        ["direct_label_inference", "norm_scoring"],
        {"unusable training labels": 1},
        "dtype float64",
    ),
}


@pytest.fixture(scope="module")
def honest_scoring() -> dict[str, Any]:
    return _flower(vfl_config({"direct_label_inference": {}, "norm_scoring": {}}, training={"epochs": 1}))[0]


@pytest.mark.parametrize("case", list(SCORING_FAULTS))
def test_a_bad_reply_in_attack_scoring_leaves_attacks_unscored_and_the_run_completes(
    case: str, honest_scoring: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    tamper, unscored, rejected, reason = SCORING_FAULTS[case]
    cfg = vfl_config({"direct_label_inference": {}, "norm_scoring": {}}, training={"epochs": 1})
    results, _ = _flower(cfg, tamper)
    assert results["mp"] == honest_scoring["mp"] and results["train_loss"] == honest_scoring["train_loss"]
    assert results["rejected_replies"] == rejected and not honest_scoring["rejected_replies"]
    for name, result in results["attacks"].items():
        if name in unscored:
            assert set(result) == {"attack", "error"} and reason in result["error"], result
        else:
            assert result == honest_scoring["attacks"][name]
    scored = [name for name in results["attacks"] if name not in unscored]
    assert results["ap_worst_case_attack"] in (scored or [None])
    assert "attack scoring" in caplog.text


# -- roles and alignment --------------------------------------------------------------------------------------------
def test_party_role_from_simulation_and_deployment_node_config() -> None:
    assert party_role({"partition-id": 2, "num-partitions": 3}, 2).is_label
    assert party_role({"partition-id": 1, "num-partitions": 3}, 2).party_id == 1
    assert party_role({"role": "label"}, 2).is_label
    explicit = party_role({"role": "feature", "party-id": 1, "partition-id": 0, "num-partitions": 9}, 2)
    assert (explicit.role, explicit.party_id) == ("feature", 1)
    with pytest.raises(ValueError, match="simulated federation has 2"):
        party_role({"partition-id": 0, "num-partitions": 2}, 2)
    with pytest.raises(ValueError, match="party-id"):
        party_role({"role": "feature"}, 2)
    with pytest.raises(ValueError, match="not one of the 2 feature parties"):
        party_role({"role": "feature", "party-id": 2}, 2)
    with pytest.raises(ValueError, match="role must be"):
        party_role({"role": "passive"}, 2)


def test_parties_train_on_the_shared_samples_only() -> None:
    # The feature party reports that it lacks the first ten samples: every party must drop them, in step.
    def drop_first_ids(message: Message, reply: Message) -> list[Message]:
        if message.metadata.message_type != SAMPLE_IDS or reply.content["config"]["role"] != "feature":
            return [reply]
        arrays = reply.content.array_records["arrays"]
        content = RecordDict(
            {
                "config": reply.content["config"],
                "arrays": ArrayRecord(
                    {"train-ids": Array(arrays["train-ids"].numpy()[10:].copy()), "test-ids": arrays["test-ids"]}
                ),
            }
        )
        return [Message(content, reply_to=message)]

    vfl = vfl_config(training={"epochs": 1})
    results, grid = _flower(vfl, drop_first_ids)
    assert results["num_train"] == 445 and results["skipped_batches"] == 0
    data = prepare_data(vfl)
    for context in grid.contexts.values():
        party = load_party(context)
        if party_role(context.node_config, 1).is_label:
            assert torch.equal(party.labels, data.train_labels[10:])
            assert party.features is not None and torch.equal(party.features, data.train_columns[1][10:])
        else:
            assert torch.equal(party.features, data.train_columns[0][10:])


def test_a_federation_of_the_wrong_size_is_refused() -> None:
    cfg = vfl_config(training={"timeout": 0.1})
    grid = LoopbackGrid(client_app, 3, {CONFIG_KEY: encode_config(cfg)})
    with pytest.raises(RuntimeError, match="needs 2 nodes"):
        VFLServer(cfg).run(grid)


# -- a real Flower simulation -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_flwr_run_simulation_matches_the_in_process_backend(tmp_path: Path) -> None:
    overrides = [
        "training.epochs=1",
        "training.batch_size=256",
        "attack=[direct_label_inference]",
        "seed=5",
        "simulation.num_cpus=1",  # one Ray actor serves both parties: fewer processes to start
    ]
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        flower_cfg = load_config(compose(config_name="vfl", overrides=overrides))
        inprocess_cfg = load_config(compose(config_name="vfl", overrides=[*overrides, "simulation.backend=inprocess"]))
    flower = run_experiment(flower_cfg, tmp_path / "flower")
    inprocess = run_experiment(inprocess_cfg, tmp_path / "inprocess")
    for key in ("mp", "auc", "train_loss", "attacks", "skipped_batches", "num_train"):
        assert flower[key] == inprocess[key], key
    assert flower["attacks"]["direct_label_inference"]["ap"] == 1.0  # no defence: every label leaks
    assert len(flower["epoch_seconds"]) == 1
    saved = json.loads((tmp_path / "flower" / "results.json").read_text())
    assert saved["mp"] == flower["mp"] and saved["backend"] == "flwr_run"
    assert (tmp_path / "flower" / "config.yaml").is_file()
    assert superlink_processes(tmp_path / "flower" / ".flwr") == []
