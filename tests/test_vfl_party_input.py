"""What a VFL party chooses to send cannot steer the server past the protocol: an unscored attack result carries no
figure, a batch is stepped on once per request, and free text from a party is kept at a bounded length."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fl_kd.clients.vfl_app import app as client_app
from fl_kd.clients.vfl_party import load_party
from fl_kd.config import from_mapping
from fl_kd.protocol import MAX_PARTY_TEXT, ProtocolError
from fl_kd.strategies.vfl import VFLServer
from fl_kd.strategies.vfl_exchange import Messenger, request
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.attack_results import decode_attack_results
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.metrics import worst_case_ap
from tests.flower_loopback import LoopbackGrid
from tests.test_protocol import decodes  # noqa: F401 - the fixture

ATTACK = "direct_label_inference"


def _config(**changes: Any) -> VFLRunConfig:
    return from_mapping(VFLRunConfig, {"seed": 3, "attack": {}, "training": {"epochs": 1, "batch_size": 16}} | changes)


def _set_up(cfg: VFLRunConfig) -> tuple[LoopbackGrid, VFLServer, Messenger]:
    """Parties discovered and set up for ``cfg`` on a loopback grid, and the server's messenger."""
    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(cfg)})
    server = VFLServer(cfg)
    messenger = Messenger(grid, 60.0)
    server.setup(messenger, *server.discover(messenger))
    return grid, server, messenger


def _results(result: dict[str, Any]) -> RecordDict:
    return RecordDict({vp.CONFIG: ConfigRecord({vp.RESULTS: json.dumps({ATTACK: result})})})


@pytest.mark.parametrize("ap", ["0.99x", 7.5, True, 0.3])
def test_an_unscored_attack_result_with_a_figure_beside_its_error_is_refused(ap: object) -> None:
    results, refused = decode_attack_results(_results({"attack": ATTACK, "error": "n/a", "ap": ap}), [ATTACK], 100)
    assert refused and "reports an error and figures ['ap']" in refused[0]
    assert set(results[ATTACK]) == {"attack", "error"}
    assert worst_case_ap(results) == {"ap_worst_case": None, "ap_worst_case_attack": None}
    honest, _ = decode_attack_results(_results({"attack": ATTACK, "error": "does not apply"}), [ATTACK], 100)
    assert honest[ATTACK]["error"] == "does not apply"


def test_the_worst_case_skips_what_is_no_real_number() -> None:
    scored: dict[str, dict[str, Any]] = {
        "a": {"ap": 0.6},
        "b": {"ap": True},
        "c": {"ap": "0.9"},
        "d": {"error": "x", "ap": 0.99},
    }
    assert worst_case_ap(scored) == {"ap_worst_case": 0.6, "ap_worst_case_attack": "a"}


def test_an_attacking_party_that_smuggles_a_figure_no_longer_stops_the_run() -> None:
    cfg = _config(attack={ATTACK: {}}, training={"epochs": 1, "batch_size": 64})

    def tamper(message: Message, reply: Message) -> list[Message]:
        if message.metadata.message_type == vp.ATTACK_RESULTS:
            return [Message(_results({"attack": ATTACK, "error": "n/a", "ap": "zzz"}), reply_to=message)]
        return [reply]

    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(cfg)}, tamper)
    results = VFLServer(cfg).run(grid)
    assert results["attacks"][ATTACK]["error"].startswith("not scored: ") and results["ap_worst_case"] is None
    assert results["mp"] > 0.8  # the run itself finished


@pytest.mark.parametrize("batches", [[0, 0], [0, 0, 0, 0, 0], [-1]])
def test_a_request_naming_a_batch_twice_or_a_negative_batch_is_refused_before_any_step(batches: list[int]) -> None:
    with pytest.raises(ProtocolError, match="negative or repeated batch"):
        vp.batches_of(RecordDict({vp.CONFIG: ConfigRecord({vp.BATCHES: batches})}))
    cfg = _config()
    grid, server, messenger = _set_up(cfg)
    ids = np.arange(16, dtype=np.int64)
    feature = server.features[0].node_id
    embedded = messenger.exchange(vp.EMBED, {feature: request({vp.ids_key(0): ids}, epoch=0, batches=[0])})
    content = embedded[feature].content
    assert content is not None
    embedding = content.array_records[vp.ARRAYS][vp.embedding_key(0)].numpy()
    label = grid.contexts[server.label.node_id]
    before = load_party(label).state_dict()
    arrays = ArrayRecord({vp.ids_key(0): Array(ids), vp.embedding_key(0, 0): Array(embedding)})
    message = Message(
        RecordDict({vp.ARRAYS: arrays, vp.CONFIG: ConfigRecord({vp.EPOCH: 0, vp.BATCHES: batches})}),
        dst_node_id=server.label.node_id,
        message_type=vp.LOSS_AND_GRADIENTS,
    )
    with pytest.raises(ProtocolError):
        client_app(message, label)
    after = load_party(label).state_dict()
    assert after.keys() == before.keys()
    for key in before:
        if hasattr(before[key], "items"):
            continue
        assert str(after[key]) == str(before[key]), key


def test_an_error_reason_is_kept_at_a_bounded_length() -> None:
    cfg = _config()
    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(cfg)})
    messenger = Messenger(grid, 60.0)
    node = next(iter(grid.contexts))

    def shout(message: Message, reply: Message) -> list[Message]:
        return [Message(Error(code=0, reason="x" * 2_000_000), reply_to=message)]

    grid.tamper = shout
    outcome = messenger.exchange(vp.EMBED_TEST, {node: RecordDict()})[node]
    assert outcome.content is None and outcome.problem is not None
    assert len(outcome.problem) < MAX_PARTY_TEXT + 100 and "(2000000 characters)" in outcome.problem


def test_a_feature_party_takes_each_batchs_gradient_once_whatever_is_replayed() -> None:
    """Feature parties read no epoch and kept their embedded batches by index alone: an epoch-0 embed request
    replayed in epoch 1 reopened batch 0, its replayed gradient stepped the bottom model a second time, and the
    genuine epoch-1 gradient was then refused."""
    cfg = _config(training={"epochs": 2, "batch_size": 16})
    grid, server, messenger = _set_up(cfg)
    node = server.features[0].node_id
    context = grid.contexts[node]
    ids = {0: np.arange(16, dtype=np.int64), 1: np.arange(16, 32, dtype=np.int64)}
    gradient = np.random.default_rng(0).normal(0.0, 0.01, (16, server.embedding_dims[0])).astype(np.float32)

    def send(kind: str, epoch: int, with_gradient: bool = False) -> Message:
        arrays = {vp.ids_key(0): Array(ids.get(epoch, ids[0]))}
        if with_gradient:
            arrays[vp.gradient_key(0)] = Array(gradient)
        config = ConfigRecord({vp.EPOCH: epoch, vp.BATCHES: [0]})
        content = RecordDict({vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: config})
        return client_app(Message(content, dst_node_id=node, message_type=kind), context)

    def weights() -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in load_party(context).bottom_model.parameters()]

    def refused(reply: Message) -> list[str]:
        return [str(v) for v in reply.content.config_records[vp.CONFIG].values()]

    send(vp.EMBED, 0)
    assert refused(send(vp.APPLY_GRADIENTS, 0, with_gradient=True)) == []
    send(vp.EMBED, 1)
    before = weights()
    with pytest.raises(ValueError, match="batch 0 of epoch 0 is not after the last batch embedded"):
        send(vp.EMBED, 0)  # replayed
    assert refused(send(vp.APPLY_GRADIENTS, 0, with_gradient=True)) == [
        "batch 0 of epoch 0: these are not the sample ids this party embedded"
    ]
    assert all(np.array_equal(a, b) for a, b in zip(weights(), before, strict=True))
    assert refused(send(vp.APPLY_GRADIENTS, 1, with_gradient=True)) == []  # the genuine one
    assert not all(np.array_equal(a, b) for a, b in zip(weights(), before, strict=True))
    for epoch in (-7, 2):
        with pytest.raises(ProtocolError, match="no epoch in"):
            send(vp.EMBED, epoch)


def test_a_batch_beyond_the_epoch_is_refused_before_it_can_lock_out_the_rest_of_the_epoch() -> None:
    """The label party steps in (epoch, batch) order; it stepped on batch 10**12 and then refused every real batch of
    the epoch as "not after the last step"."""
    with pytest.raises(ProtocolError, match="batch 5 in batches, beyond the epoch's 5 batches"):
        vp.batches_of(RecordDict({vp.CONFIG: ConfigRecord({vp.BATCHES: [0, 5]})}), below=5)
    cfg = _config()
    grid, server, messenger = _set_up(cfg)
    per_epoch = -(-server.num_train // cfg.training.batch_size)
    ids = np.arange(16, dtype=np.int64)
    feature = server.features[0].node_id
    outcome = messenger.exchange(vp.EMBED, {feature: request({vp.ids_key(0): ids}, epoch=0, batches=[0])})[feature]
    assert outcome.content is not None
    embedding = outcome.content.array_records[vp.ARRAYS][vp.embedding_key(0)].numpy()
    label = grid.contexts[server.label.node_id]
    for batch in (per_epoch, per_epoch - 1):
        arrays = ArrayRecord({vp.ids_key(batch): Array(ids), vp.embedding_key(batch, 0): Array(embedding)})
        content = RecordDict({vp.ARRAYS: arrays, vp.CONFIG: ConfigRecord({vp.EPOCH: 0, vp.BATCHES: [batch]})})
        message = Message(content, dst_node_id=server.label.node_id, message_type=vp.LOSS_AND_GRADIENTS)
        if batch == per_epoch:
            with pytest.raises(ProtocolError, match=f"beyond the epoch's {per_epoch} batches"):
                client_app(message, label)
        else:  # the epoch's last batch is still open
            assert vp.loss_key(batch) in client_app(message, label).content.metric_records[vp.METRICS]


def test_the_label_party_sends_its_training_labels_only_in_a_run_that_scores_attacks() -> None:
    attacks: list[dict[str, Any]] = [{}, {ATTACK: {}}]
    for attack in attacks:
        cfg = _config(attack=attack)
        grid, server, messenger = _set_up(cfg)
        outcome = messenger.exchange(vp.TRAIN_LABELS, {server.label.node_id: RecordDict()})[server.label.node_id]
        if attack:
            assert outcome.content is not None
            assert outcome.content.array_records[vp.ARRAYS][vp.LABELS].numpy().shape == (server.num_train,)
        else:
            assert outcome.content is None and "scores no attack" in str(outcome.problem)


@pytest.mark.parametrize(
    "block", [np.zeros((16, 8), np.float64), np.zeros((17, 8), np.float32), np.zeros(24, np.float32)]
)
def test_a_block_of_another_dtype_or_shape_is_refused_from_its_header_before_it_decodes(
    block: np.ndarray,
    decodes: list[tuple[int, ...]],  # noqa: F811 - the fixture
) -> None:
    cfg = _config()
    grid, server, messenger = _set_up(cfg)
    ids = np.arange(16, dtype=np.int64)
    arrays = ArrayRecord({vp.ids_key(0): Array(ids), vp.embedding_key(0, 0): Array(block)})
    content = RecordDict({vp.ARRAYS: arrays, vp.CONFIG: ConfigRecord({vp.EPOCH: 0, vp.BATCHES: [0]})})
    message = Message(content, dst_node_id=server.label.node_id, message_type=vp.LOSS_AND_GRADIENTS)
    decodes.clear()
    reply = client_app(message, grid.contexts[server.label.node_id])
    (reason,) = reply.content.config_records[vp.CONFIG].values()
    assert f"{vp.embedding_key(0, 0)} declares dtype" in str(reason)
    assert block.shape not in decodes  # only the ids decoded
