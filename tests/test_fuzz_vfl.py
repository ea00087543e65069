"""Property-based fuzzing of VFL messages: malformed embeddings, gradients and replies never crash, never count.

A tiny run (breast_cancer, two feature parties) is discovered and set up once, and one chunk of two batches is
embedded and stepped on by the real ClientApps; the honest replies are kept. Each example then mutates one reply
(wrong dtype, shape or stype, a lying header, NaN, inf or a huge norm, a wrong identity or ``reply_to``, a
duplicate, a missing record) and runs the server's screening step on it with the honest ones, or sends a bad
request to a party's real ClientApp. Nothing may raise; the reason must be counted; what passes must be bit for bit
what passes when that message is simply absent, and a refused request must leave the party's state unchanged.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_kd.clients.vfl_app import app as client_app
from fl_kd.clients.vfl_party import load_party
from fl_kd.config import ConfigError, from_mapping, to_mapping
from fl_kd.strategies import vfl_exchange
from fl_kd.strategies.vfl import VFLServer
from fl_kd.strategies.vfl_exchange import MAX_SILENT_EXCHANGES, BatchExchange, Messenger
from fl_kd.vfl import protocol as vp
from fl_kd.vfl import run_vfl
from fl_kd.vfl.attack_results import MAX_RESULTS_CHARS, MAX_RESULTS_DEPTH, UNIT_FIGURES
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.metrics import worst_case_ap
from fl_kd.vfl.trainer import TrainingHistory
from tests.flower_loopback import LoopbackGrid, set_task_identity

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BATCHES = (0, 1)


class ScriptedGrid:
    """A grid whose replies a test writes: ``answer(messages) -> replies``; messages get ids as from a SuperLink."""

    def __init__(self, answer: Callable[[list[Message]], list[Message]]) -> None:
        self.answer = answer
        self.sent: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.sent = list(messages)
        for index, message in enumerate(self.sent):
            message.metadata.__dict__["_message_id"] = f"m{index}-{message.metadata.dst_node_id}"
        return self.answer(self.sent)


class Run:
    """Parties discovered and set up; the honest embed and loss-and-gradients replies of one chunk."""

    def __init__(self) -> None:
        # Two epochs: requests of the second one reach a label party that stepped on this chunk in the first.
        training = {"epochs": 2, "batch_size": 16, "batches_per_message": len(BATCHES)}  # one chunk of two batches
        self.cfg = from_mapping(VFLRunConfig, {"seed": 3, "attack": {}, "training": training})
        self.grid = LoopbackGrid(
            client_app, self.cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(self.cfg)}
        )
        self.server = VFLServer(self.cfg)
        messenger = Messenger(self.grid, 60.0)
        self.server.setup(messenger, *self.server.discover(messenger))
        self.ids = {b: np.arange(16 * b, 16 * b + 16, dtype=np.int64) for b in BATCHES}
        test_contents = {p.node_id: RecordDict() for p in self.server.features}
        self.test_embed = {n: o.content for n, o in messenger.exchange(vp.EMBED_TEST, test_contents).items()}
        history = TrainingHistory()
        exchange = self.exchange(messenger, history)
        # The feature parties' embed replies as they come: a party embeds a batch once, so they are kept on the way.
        self.embed: dict[int, RecordDict] = {}
        exchanged = messenger.exchange

        def keeping(kind: str, contents: Any, *args: Any, **kwargs: Any) -> Any:
            outcomes = exchanged(kind, contents, *args, **kwargs)
            if kind == vp.EMBED:
                self.embed = {node: outcome.content for node, outcome in outcomes.items()}
            return outcomes

        messenger.exchange = keeping
        accepted = exchange._embed(0, self.ids)  # noqa: SLF001 - replays the real exchange on the real grid
        messenger.exchange = exchanged
        assert sorted(self.embed) == [p.node_id for p in self.server.features]
        self.embeddings = accepted
        self.losses, self.step_reply = exchange._step(0, self.ids, accepted)
        assert sorted(self.losses) == list(BATCHES) and not history.skipped_batches

    def exchange(self, messenger: Messenger, history: TrainingHistory) -> BatchExchange:
        server = self.server
        max_norm = self.cfg.training.max_norm
        return BatchExchange(messenger, server.features, server.label, server.embedding_dims, history, max_norm)


@pytest.fixture(scope="module")
def run() -> Run:
    return Run()


def _npy(value: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=True)
    return buffer.getvalue()


@st.composite
def bad_block(draw: st.DrawFn, honest: np.ndarray) -> Array | None:
    """An embedding or gradient that must be refused (None: left out)."""
    kind = draw(st.sampled_from(["dtype", "shape", "value", "header", "missing"]))
    value = honest.copy()
    if kind == "dtype":
        dtype = draw(st.sampled_from(["float64", "float16", "int32", "int64", "bool", "uint8", "complex64"]))
        return Array(value.astype(dtype))
    if kind == "shape":
        shapes = [
            value[:-1],
            value[:, :-1],
            value[None],
            value.ravel(),
            np.concatenate([value, value[:1]]),
            value[0, 0],
        ]
        return Array(np.ascontiguousarray(shapes[draw(st.integers(0, len(shapes) - 1))]))
    if kind == "value":
        row, col = draw(st.integers(0, value.shape[0] - 1)), draw(st.integers(0, value.shape[1] - 1))
        bad = draw(st.floats(min_value=2e4, max_value=3.4e38) | st.sampled_from([np.nan, np.inf]))
        value[row, col] = draw(st.sampled_from([1.0, -1.0])) * bad
        return Array(value)
    if kind == "header":
        dtype, shape, data, stype = "float32", tuple(value.shape), _npy(value), "numpy.ndarray"
        lie = draw(st.sampled_from(["stype", "dtype", "shape", "garbage", "truncated", "pickle"]))
        if lie == "stype":
            stype = draw(st.sampled_from(["torch.Tensor", "", "pickle"]))
        elif lie == "dtype":
            dtype = draw(st.sampled_from(["nosuch", "object", "float64", "int32", "complex64"]))
        elif lie == "shape":
            shape = draw(st.sampled_from([(10**9, 10**9), (-1, 2), (value.size + 1,), (), (value.shape[0], 1)]))
        elif lie == "garbage":
            data = draw(st.binary(max_size=64))
        elif lie == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        else:
            data = _npy(np.array([{"a": 1}, [2]], dtype=object))
        return Array(dtype=dtype, shape=shape, stype=stype, data=data)
    return None


def _copy_with(content: RecordDict, key: str, array: Array | None) -> RecordDict:
    arrays = dict(content.array_records[vp.ARRAYS])
    if array is None:
        arrays.pop(key)
    else:
        arrays[key] = array
    out = RecordDict({vp.ARRAYS: ArrayRecord(arrays)})
    for name in (vp.CONFIG, vp.METRICS):
        if name in content:
            out[name] = copy.deepcopy(content[name])
    return out


def _same(left: np.ndarray, right: np.ndarray) -> bool:
    return left.dtype == right.dtype and left.shape == right.shape and left.tobytes() == right.tobytes()


# -- the server: embeddings ---------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_a_bad_embedding_reply_skips_only_what_it_touches(run: Run, data: st.DataObject) -> None:
    party = data.draw(st.integers(0, len(run.server.features) - 1))
    victim = run.server.features[party].node_id
    batch = data.draw(st.sampled_from(BATCHES))
    kind = data.draw(st.sampled_from(["array"] * 4 + ["error", "reply_to", "unknown node", "duplicate", "no arrays"]))
    block = data.draw(bad_block(run.embed[victim].array_records[vp.ARRAYS][vp.embedding_key(batch)].numpy()))

    def answer(messages: list[Message]) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            content = run.embed[node]
            if node == victim and kind == "array":
                content = _copy_with(content, vp.embedding_key(batch), block)
            elif node == victim and kind == "no arrays":
                content = RecordDict()
            reply = Message(content, reply_to=message)
            if node == victim and kind == "error":
                reply = Message(Error(code=0, reason="boom"), reply_to=message)
            elif node == victim and kind == "reply_to":
                reply.metadata.__dict__["_reply_to_message_id"] = data.draw(st.text(max_size=8))
            elif node == victim and kind == "unknown node":
                reply.metadata.__dict__["_src_node_id"] = data.draw(st.integers(1, 999))
            replies.extend([reply, reply] if node == victim and kind == "duplicate" else [reply])
        return replies

    history = TrainingHistory()
    messenger = Messenger(cast(Grid, ScriptedGrid(answer)), 1.0)
    accepted = run.exchange(messenger, history)._embed(0, run.ids)  # noqa: SLF001
    dropped = {batch} if kind == "array" else set(BATCHES)
    assert sorted(accepted) == sorted(set(BATCHES) - dropped)
    assert len(history.skipped_batches) == len(dropped)
    if kind in ("error", "reply_to", "unknown node", "duplicate"):
        assert sum(messenger.rejected.values()) >= 1
    for b, embeddings in accepted.items():
        assert all(_same(e, h) for e, h in zip(embeddings, run.embeddings[b], strict=True))


# -- the server: the label party's gradients and losses ----------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_a_bad_gradient_is_not_forwarded_and_is_counted(run: Run, data: st.DataObject) -> None:
    party = data.draw(st.integers(0, len(run.server.features) - 1))
    batch = data.draw(st.sampled_from(BATCHES))
    key = vp.gradient_key(batch, party)
    block = data.draw(bad_block(run.step_reply.array_records[vp.ARRAYS][key].numpy()))
    reply = _copy_with(run.step_reply, key, block)
    grid = ScriptedGrid(lambda messages: [Message(RecordDict(), reply_to=m) for m in messages])
    history = TrainingHistory()
    run.exchange(Messenger(cast(Grid, grid), 1.0), history)._apply(0, run.ids, list(BATCHES), reply)  # noqa: SLF001
    assert [(u["party"], u["batch"]) for u in history.failed_updates] == [(party, batch)]
    for sent in grid.sent:
        k = next(p.party_id for p in run.server.features if p.node_id == sent.metadata.dst_node_id)
        expected = [b for b in BATCHES if (k, b) != (party, batch)]
        assert vp.batches_of(sent.content) == expected
        for b in expected:
            honest = run.step_reply.array_records[vp.ARRAYS][vp.gradient_key(b, k)].numpy()
            assert _same(sent.content.array_records[vp.ARRAYS][vp.gradient_key(b)].numpy(), honest)
            assert _same(sent.content.array_records[vp.ARRAYS][vp.ids_key(b)].numpy(), run.ids[b])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.sampled_from(BATCHES),
    loss=st.sampled_from(
        [
            np.nan,
            np.inf,
            -np.inf,
            10**400,
            -3.0,
            1e39,
            "0.5",
            True,
            None,
            "rejected",
            "rejected as 10**5000",
            "rejected as [10**5000]",
        ]  # fmt: skip
    ),
)
def test_a_bad_loss_skips_its_batch(run: Run, batch: int, loss: Any) -> None:
    metrics: dict[str, Any] = dict(run.step_reply.metric_records[vp.METRICS])
    config: dict[str, Any] = {}
    if loss is None:
        metrics.pop(vp.loss_key(batch))
    elif loss == "rejected":
        config[vp.rejected_key(batch)] = "the label party says no"
    elif loss == "rejected as 10**5000":
        config[vp.rejected_key(batch)] = 10**5000  # str() refuses it: the reason is described, not printed
    elif loss == "rejected as [10**5000]":
        config[vp.rejected_key(batch)] = [10**5000]  # nor inside a list, where it stopped the run
    else:
        metrics[vp.loss_key(batch)] = loss
    # Any record type may arrive under any name: the server reads scalars from whichever it finds.
    content = RecordDict(
        {
            vp.ARRAYS: run.step_reply.array_records[vp.ARRAYS],
            vp.METRICS: ConfigRecord(metrics),
            vp.CONFIG: ConfigRecord(config),
        }
    )
    grid = ScriptedGrid(lambda messages: [Message(content, reply_to=m) for m in messages])
    history = TrainingHistory()
    losses, _ = run.exchange(Messenger(cast(Grid, grid), 1.0), history)._step(0, run.ids, run.embeddings)  # noqa: SLF001
    assert sorted(losses) == [b for b in BATCHES if b != batch]
    assert [s["batch"] for s in history.skipped_batches] == [batch]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_bad_test_embedding_gives_nan_mp_and_its_reason(run: Run, data: st.DataObject) -> None:
    victim = run.server.features[data.draw(st.integers(0, len(run.server.features) - 1))].node_id
    block = data.draw(bad_block(run.test_embed[victim].array_records[vp.ARRAYS][vp.TEST_EMBEDDING].numpy()))

    def answer(messages: list[Message]) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            content = run.test_embed[node]
            replies.append(
                Message(_copy_with(content, vp.TEST_EMBEDDING, block) if node == victim else content, reply_to=message)
            )
        return replies

    result = run.server._evaluate_or_nan(Messenger(cast(Grid, ScriptedGrid(answer)), 1.0))  # noqa: SLF001
    assert np.isnan(result["accuracy"]) and "feature party" in result["evaluation_error"]


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        ({vp.ACCURACY: 7.5}, "accuracy 7.5 on"),
        ({vp.ACCURACY: -0.1}, "accuracy -0.1 on"),
        ({vp.NUM_SAMPLES: -40}, "on -40 samples"),
        ({vp.NUM_SAMPLES: 10**9}, "on 1000000000 samples"),
        ({vp.AUC: float("inf")}, "an AUC of inf"),
        ({vp.ACCURACY: 10**400}, "reported no accuracy"),
        ({vp.AUC: 1.5}, "an AUC of 1.5"),
    ],
)
def test_evaluation_figures_out_of_range_give_nan_mp_and_their_reason(
    run: Run, figures: dict[str, Any], reason: str
) -> None:
    """The label party's accuracy is a share of the aligned test samples and its AUC a probability: a reply that
    says otherwise is refused as unusable, never reported as the run's main-task performance."""
    honest: dict[str, Any] = {vp.ACCURACY: 0.5, vp.NUM_SAMPLES: run.server.num_test, vp.AUC: 0.6}

    def answer(metrics: dict[str, Any]) -> Callable[[list[Message]], list[Message]]:
        def reply(messages: list[Message]) -> list[Message]:
            return [
                Message(
                    run.test_embed[m.metadata.dst_node_id]
                    if m.metadata.dst_node_id in run.test_embed
                    else RecordDict({vp.METRICS: MetricRecord(metrics)}),
                    reply_to=m,
                )
                for m in messages
            ]

        return reply

    good = run.server._evaluate_or_nan(Messenger(cast(Grid, ScriptedGrid(answer(honest))), 1.0))  # noqa: SLF001
    assert good == {"accuracy": 0.5, "num_samples": run.server.num_test, "auc": 0.6}
    result = run.server._evaluate_or_nan(  # noqa: SLF001
        Messenger(cast(Grid, ScriptedGrid(answer(honest | figures))), 1.0)
    )
    assert np.isnan(result["accuracy"]) and reason in result["evaluation_error"]


# -- the parties' ClientApps ---------------------------------------------------------------------------------------
def _state(context: Any) -> dict[str, Any]:
    """What the party is (its decoded state: models, optimiser, step, defence) and every other record's bytes."""
    out: dict[str, Any] = {"party": load_party(context).state_dict()}
    for name, found in context.state.items():
        if isinstance(found, ArrayRecord):
            out[name] = {key: array.data for key, array in found.items()}
    return out


def _assert_same(left: Any, right: Any, path: str = "state") -> None:
    if isinstance(left, dict):
        assert sorted(left, key=str) == sorted(right, key=str), path
        for key in left:
            _assert_same(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), path
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same(a, b, f"{path}[{index}]")
    elif isinstance(left, torch.Tensor):
        assert left.dtype == right.dtype and torch.equal(left, right), path
    else:
        assert left == right, path


@FUZZ
@given(data=st.data())
def test_a_party_refuses_a_bad_request_and_keeps_its_state(run: Run, data: st.DataObject) -> None:
    batch = data.draw(st.sampled_from(BATCHES))
    target = data.draw(st.sampled_from(["feature", "label"]))
    if target == "feature":
        party = run.server.features[data.draw(st.integers(0, len(run.server.features) - 1))]
        ids = run.ids[batch]
        honest = run.step_reply.array_records[vp.ARRAYS][vp.gradient_key(batch, party.party_id)].numpy()
        arrays: dict[str, Any] = {vp.ids_key(batch): Array(ids), vp.gradient_key(batch): Array(honest)}
        if data.draw(st.booleans()):
            block = data.draw(bad_block(honest))
            arrays = _with(arrays, vp.gradient_key(batch), block)
        else:  # honest values for samples it did not embed, or ids that are no ids
            wrong = data.draw(
                st.sampled_from([ids[::-1].copy(), ids + 1, ids.astype(np.float32), ids.astype(bool), ids[:-1]])
            )
            arrays[vp.ids_key(batch)] = Array(np.ascontiguousarray(wrong))
        message_type, node = "train.apply_gradients", party.node_id
    else:
        arrays = {vp.ids_key(batch): Array(run.ids[batch])}
        for k, embedding in enumerate(run.embeddings[batch]):
            arrays[vp.embedding_key(batch, k)] = Array(embedding)
        k = data.draw(st.integers(0, len(run.server.features) - 1))
        arrays = _with(arrays, vp.embedding_key(batch, k), data.draw(bad_block(run.embeddings[batch][k])))
        message_type, node = "train.loss_and_gradients", run.server.label.node_id
    context = run.grid.contexts[node]
    before = _state(context)
    epoch = 0 if target == "feature" else 1  # the label party stepped on epoch 0's batches: a repeat is refused as such
    content = RecordDict(
        {vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: ConfigRecord({vp.EPOCH: epoch, vp.BATCHES: [batch]})}
    )
    reply = client_app(Message(content, dst_node_id=node, message_type=message_type), context)
    assert vp.rejected_key(batch) in reply.content.config_records[vp.CONFIG]
    _assert_same(_state(context), before)


def test_the_label_party_steps_on_a_batch_once_and_in_order() -> None:
    """A request delivered twice, or naming an earlier batch or no epoch of the run, is not stepped on again."""
    fresh = Run()  # its own run: this test steps the label party on
    node = fresh.server.label.node_id
    context = fresh.grid.contexts[node]

    def step(epoch: Any, batch: int) -> Message:
        arrays = {vp.ids_key(batch): Array(fresh.ids[batch])}
        arrays |= {vp.embedding_key(batch, k): Array(e) for k, e in enumerate(fresh.embeddings[batch])}
        content = RecordDict(
            {vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: ConfigRecord({vp.EPOCH: epoch, vp.BATCHES: [batch]})}
        )
        return client_app(Message(content, dst_node_id=node, message_type="train.loss_and_gradients"), context)

    first = step(1, BATCHES[0])
    assert vp.loss_key(BATCHES[0]) in first.content.metric_records[vp.METRICS]
    stepped = _state(context)
    for epoch, batch in ((1, BATCHES[0]), (0, BATCHES[-1])):
        reply = step(epoch, batch)
        assert "is not after the last step" in str(reply.content.config_records[vp.CONFIG][vp.rejected_key(batch)])
        _assert_same(_state(context), stepped)
    for bad in ("1", 2, -1, [1], True):  # no epoch of this 2-epoch run: the request is refused whole
        with pytest.raises(ValueError, match="names no epoch"):
            step(bad, BATCHES[-1])
        _assert_same(_state(context), stepped)
    assert vp.loss_key(BATCHES[-1]) in step(1, BATCHES[-1]).content.metric_records[vp.METRICS]


def test_a_scalar_block_is_refused_alone_and_the_rest_of_the_request_is_stepped_on() -> None:
    """A 0-d gradient or embedding beside a good batch: that batch is refused, the good one is stepped on and kept.

    A scalar has no ``shape[0]``; read before its dimensions were, it raised an IndexError that failed the whole
    request after the good batch had changed the party, so that step was lost and could not be sent again.
    """
    fresh = Run()  # its own run: this test steps both parties on
    good, bad = BATCHES
    party = fresh.server.features[0]
    gradient = fresh.step_reply.array_records[vp.ARRAYS][vp.gradient_key(good, party.party_id)].numpy()
    arrays = {vp.ids_key(good): Array(fresh.ids[good]), vp.gradient_key(good): Array(gradient)}
    arrays |= {vp.ids_key(bad): Array(fresh.ids[bad]), vp.gradient_key(bad): Array(np.asarray(gradient[0, 0]))}
    content = RecordDict(
        {vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: ConfigRecord({vp.EPOCH: 0, vp.BATCHES: [good, bad]})}
    )
    context = fresh.grid.contexts[party.node_id]
    before = _state(context)
    reply = client_app(Message(content, dst_node_id=party.node_id, message_type="train.apply_gradients"), context)
    config = reply.content.config_records[vp.CONFIG]
    assert "shape ()" in str(config[vp.rejected_key(bad)]) and vp.rejected_key(good) not in config
    with pytest.raises(AssertionError):
        _assert_same(_state(context), before)  # the good batch's step was kept

    label = fresh.server.label.node_id
    arrays = {vp.ids_key(b): Array(fresh.ids[b]) for b in BATCHES}
    for k, embedding in enumerate(fresh.embeddings[good]):
        arrays[vp.embedding_key(good, k)] = Array(embedding)
        arrays[vp.embedding_key(bad, k)] = Array(np.asarray(embedding[0, 0]))
    content = RecordDict(
        {vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: ConfigRecord({vp.EPOCH: 1, vp.BATCHES: [good, bad]})}
    )
    reply = client_app(
        Message(content, dst_node_id=label, message_type="train.loss_and_gradients"), fresh.grid.contexts[label]
    )
    assert vp.loss_key(good) in reply.content.metric_records[vp.METRICS]
    assert "shape ()" in str(reply.content.config_records[vp.CONFIG][vp.rejected_key(bad)])


def test_apply_and_embed_refuses_a_bad_embed_part_before_applying_anything() -> None:
    """Its embed part (ids out of the party's range) is checked before the gradients of its apply part step the
    party: the request is refused whole, and the batch whose gradient it carried can be sent again."""
    fresh = Run()
    party = fresh.server.features[0]
    good = BATCHES[0]
    gradient = fresh.step_reply.array_records[vp.ARRAYS][vp.gradient_key(good, party.party_id)].numpy()
    arrays = {vp.ids_key(good): Array(fresh.ids[good]), vp.gradient_key(good): Array(gradient)}
    arrays[vp.ids_key(7)] = Array(np.array([10**9], dtype=np.int64))
    config = ConfigRecord({vp.EPOCH: 0, vp.BATCHES: [7], vp.APPLY: [good]})
    content = RecordDict({vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: config})
    context = fresh.grid.contexts[party.node_id]
    before = _state(context)
    with pytest.raises(ValueError, match="sample_ids must lie in"):
        client_app(Message(content, dst_node_id=party.node_id, message_type=vp.APPLY_AND_EMBED), context)
    _assert_same(_state(context), before)


def _with(arrays: dict[str, Any], key: str, block: Array | None) -> dict[str, Any]:
    out = dict(arrays)
    if block is None:
        out.pop(key)
    else:
        out[key] = block
    return out


# -- the server: attack scoring ----------------------------------------------------------------------------------
SCORED = {"direct_label_inference": {}, "adaptive_label_inference": {}, "passive_model_completion": {"steps": 20}}


class Scoring:
    """A server that scores :data:`SCORED` on the parties of :class:`Run`, and the honest replies it gets.

    The honest attack results are those of the same run in-process (``run_vfl``): real figures, nested per epoch.
    """

    def __init__(self, run: Run) -> None:
        cfg = from_mapping(VFLRunConfig, {**to_mapping(run.cfg), "attack": SCORED})
        self.server = VFLServer(cfg)
        for name in ("features", "_label", "embedding_dims", "num_train", "num_test", "num_classes"):
            setattr(self.server, name, getattr(run.server, name))
        # The label party sends its labels only in a run that scores attacks: the same parties, set up in one.
        grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(cfg)})
        scorer, messenger = VFLServer(cfg), Messenger(grid, 60.0)
        scorer.setup(messenger, *scorer.discover(messenger))
        label = scorer.label.node_id
        self.labels_reply = messenger.exchange(vp.TRAIN_LABELS, {label: RecordDict()})[label].content
        assert self.labels_reply is not None
        self.labels = self.labels_reply.array_records[vp.ARRAYS][vp.LABELS].numpy()
        self.honest = json.loads(json.dumps(run_vfl(cfg)["attacks"]))
        assert all("ap" in result for result in self.honest.values()), self.honest
        self.results_reply = RecordDict({vp.CONFIG: ConfigRecord({vp.RESULTS: json.dumps(self.honest)})})


@pytest.fixture(scope="module")
def scoring(run: Run) -> Scoring:
    return Scoring(run)


def _nested(depth: int) -> Any:
    value: Any = {"ap": 0.5}
    for _ in range(depth):
        value = {"per_epoch": [value]}
    return value


@st.composite
def bad_result(draw: st.DrawFn, name: str, honest: dict[str, Any], num_train: int) -> Any:
    """One attack's result that must be refused (the attack is then reported as not scored)."""
    kind = draw(st.sampled_from(["figure", "count", "name", "type", "error", "no ap", "deep"]))
    result = copy.deepcopy(honest)
    if kind == "figure":
        key = draw(st.sampled_from(sorted(set(result) & UNIT_FIGURES)))
        result[key] = draw(
            st.floats(min_value=1.0, exclude_min=True, allow_infinity=False)
            | st.floats(max_value=0.0, exclude_max=True, allow_infinity=False)
            | st.sampled_from(["0.5", True, None, [0.5], {"ap": 0.5}])
        )
    elif kind == "count":
        result["num_samples"] = draw(st.sampled_from([-1, num_train + 1, 10**12, 2.5, "7", False, None]))
    elif kind == "name":
        result["attack"] = draw(st.sampled_from(sorted(set(SCORED) - {name}) + ["", "none"]))
    elif kind == "type":
        return draw(st.sampled_from([0.9, "0.9", [result], None, True]))
    elif kind == "error":
        result = {"attack": name, "error": draw(st.sampled_from([1, None, ["boom"], {"a": 1}]))}
    elif kind == "no ap":
        result.pop("ap")
    else:
        result["per_epoch"] = [_nested(MAX_RESULTS_DEPTH + 1)]
    return result


@st.composite
def bad_results_text(draw: st.DrawFn, honest: dict[str, Any]) -> Any:
    """A whole attack-results text that must be refused (every attack is then reported as not scored)."""
    kind = draw(st.sampled_from(["type", "garbage", "constant", "huge", "deep", "long", "list"]))
    if kind == "type":
        return draw(st.sampled_from([1, 0.5, True, b"{}", ["{}"]]))
    if kind == "garbage":
        return draw(st.text(max_size=40).filter(lambda t: not _is_json_mapping(t)))
    if kind == "constant":
        name = draw(st.sampled_from(sorted(honest)))
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return json.dumps({**honest, name: {**honest[name], "ap": 0.5}}).replace("0.5", constant, 1)
    if kind == "huge":
        return json.dumps(honest).replace("{", '{"x": 1e999, ', 1)
    if kind == "deep":
        return "[" * draw(st.integers(10_000, 100_000))
    if kind == "long":
        return json.dumps({**honest, "padding": "x" * MAX_RESULTS_CHARS})
    return json.dumps(list(honest.values()))


def _is_json_mapping(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _answer_scoring(
    scoring: Scoring, target: str, kind: str, content: RecordDict | None, data: st.DataObject | None
) -> Callable[[list[Message]], list[Message]]:
    """Replies to the scoring exchanges: honest, except ``target``'s (``labels`` or ``results``), spoilt by ``kind``."""
    spoilt_type = vp.TRAIN_LABELS if target == "labels" else vp.ATTACK_RESULTS

    def answer(messages: list[Message]) -> list[Message]:
        replies = []
        for message in messages:
            assert data is not None or kind not in ("reply_to", "unknown node")
            honest = scoring.labels_reply if message.metadata.message_type == vp.TRAIN_LABELS else scoring.results_reply
            spoilt = message.metadata.message_type == spoilt_type
            reply = Message(content if spoilt and content is not None else honest, reply_to=message)
            if spoilt and kind == "error":
                reply = Message(Error(code=0, reason="boom"), reply_to=message)
            elif spoilt and kind == "reply_to":
                reply.metadata.__dict__["_reply_to_message_id"] = cast(st.DataObject, data).draw(st.text(max_size=8))
            elif spoilt and kind == "unknown node":
                reply.metadata.__dict__["_src_node_id"] = cast(st.DataObject, data).draw(st.integers(1, 999))
            replies.extend([reply, reply] if spoilt and kind == "duplicate" else [reply])
        return replies

    return answer


def _labels_content(scoring: Scoring, data: st.DataObject) -> RecordDict:
    """A training-labels reply the server must refuse: bad bytes, dtype, shape or class range."""
    labels = scoring.labels.copy()
    kind = data.draw(st.sampled_from(["block", "dtype", "shape", "range", "missing"]))
    if kind == "block":  # the array lies about itself
        array = data.draw(bad_block(labels.astype(np.float32)[:, None]))
        return RecordDict({vp.ARRAYS: ArrayRecord({} if array is None else {vp.LABELS: array})})
    if kind == "dtype":
        labels = labels.astype(data.draw(st.sampled_from(["int32", "uint8", "float32", "float64", "bool"])))
    elif kind == "shape":
        labels = data.draw(st.sampled_from([labels[:-1], labels[None], np.concatenate([labels, labels[:1]])]))
    elif kind == "range":
        labels[data.draw(st.integers(0, len(labels) - 1))] = data.draw(
            st.integers(min_value=-(2**62), max_value=-1) | st.integers(min_value=2, max_value=2**62)
        )
    else:
        return RecordDict({vp.ARRAYS: ArrayRecord({})})
    return RecordDict({vp.ARRAYS: ArrayRecord({vp.LABELS: Array(np.ascontiguousarray(labels))})})


@FUZZ
@given(data=st.data())
def test_a_bad_reply_in_attack_scoring_leaves_attacks_unscored_and_is_counted(
    scoring: Scoring, data: st.DataObject
) -> None:
    target = data.draw(st.sampled_from(["labels", "results"]))
    kind = data.draw(
        st.sampled_from(["content"] * 6 + ["error", "reply_to", "unknown node", "duplicate", "no records"])
    )
    content: RecordDict | None = None
    what = ""
    victim = None  # the one attack a bad result concerns; None: the whole reply is refused
    if kind == "no records":
        content = RecordDict()
    elif kind == "content" and target == "labels":
        content = _labels_content(scoring, data)
    elif kind == "content":
        results: Any = dict(scoring.honest)
        what = data.draw(st.sampled_from(["one result", "missing", "extra", "text"]))
        if what == "one result":
            victim = data.draw(st.sampled_from(sorted(SCORED)))
            results[victim] = data.draw(bad_result(victim, scoring.honest[victim], scoring.server.num_train))
        elif what == "missing":
            victim = data.draw(st.sampled_from(sorted(SCORED)))
            results.pop(victim)
        elif what == "extra":
            results["norm_scoring"] = {"attack": "norm_scoring", "ap": 1.0}
        text = json.dumps(results) if what != "text" else data.draw(bad_results_text(scoring.honest))
        content = RecordDict({vp.CONFIG: ConfigRecord({vp.RESULTS: text})})
    messenger = Messenger(cast(Grid, ScriptedGrid(_answer_scoring(scoring, target, kind, content, data))), 1.0)
    scored = scoring.server.attack_results(messenger)  # nothing may raise
    assert list(scored) == list(SCORED)
    assert sum(messenger.rejected.values()) >= 1
    whole = victim is None and not (kind == "content" and target == "results" and what == "extra")
    for name, result in scored.items():
        if whole or name == victim:
            assert set(result) == {"attack", "error"} and result["error"].startswith("not scored: "), result
        else:
            assert result == scoring.honest[name]
    # The missing figures stay missing: the worst case is over the attacks that were scored, never made up.
    worst = worst_case_ap(scored)
    assert worst["ap_worst_case_attack"] in {None, *(n for n, r in scored.items() if "ap" in r)}


@pytest.mark.parametrize("kind", ["float", "int32", "short", "negative", "class"])
def test_the_attacking_party_refuses_bad_training_labels_before_any_attack_runs(kind: str) -> None:
    """The labels the harness forwards are checked on the attacker's side too: float labels were truncated into
    classes (0.7 -> 0) and scored as if true."""
    cfg = from_mapping(VFLRunConfig, {"seed": 3, "attack": SCORED, "training": {"epochs": 1, "batch_size": 16}})
    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {vp.CONFIG_KEY: vp.encode_config(cfg)})
    server = VFLServer(cfg)
    messenger = Messenger(grid, 60.0)
    server.setup(messenger, *server.discover(messenger))
    labels = np.arange(server.num_train, dtype=np.int64) % server.num_classes
    bad = {
        "float": labels + 0.7,
        "int32": labels.astype(np.int32),
        "short": labels[:-1],
        "negative": labels - 1,
        "class": labels + 1,
    }[kind]
    node = server.features[cfg.attacker_party].node_id
    content = RecordDict({vp.ARRAYS: ArrayRecord({vp.LABELS: Array(np.ascontiguousarray(bad))})})
    with pytest.raises(ValueError, match="training labels refused"):
        client_app(Message(content, dst_node_id=node, message_type=vp.ATTACK_RESULTS), grid.contexts[node])


def test_honest_attack_scoring_passes_every_result_and_refuses_nothing(scoring: Scoring) -> None:
    messenger = Messenger(cast(Grid, ScriptedGrid(_answer_scoring(scoring, "labels", "", None, None))), 1.0)
    assert scoring.server.attack_results(messenger) == scoring.honest
    assert not messenger.rejected
    sent = {m.metadata.message_type: m for m in cast(ScriptedGrid, messenger.grid).sent}
    assert _same(sent[vp.ATTACK_RESULTS].content.array_records[vp.ARRAYS][vp.LABELS].numpy(), scoring.labels)


def test_a_party_that_goes_silent_stops_the_run_after_a_few_exchanges_not_every_batch() -> None:
    """An error reply fails at once; a node that no longer answers made the run wait out the timeout on every batch
    (about ten hours of waiting, reviewed, for a run that could only skip them all)."""
    set_task_identity()  # Messages need a run id, as in a ServerApp
    quiet = {2}

    def answer(messages: list[Message]) -> list[Message]:
        return [Message(RecordDict(), reply_to=m) for m in messages if m.metadata.dst_node_id not in quiet]

    messenger = Messenger(cast(Grid, ScriptedGrid(answer)), 1.0)
    contents = {1: RecordDict(), 2: RecordDict()}
    for _ in range(MAX_SILENT_EXCHANGES - 1):
        outcomes = messenger.exchange("train", contents)
        assert outcomes[2].problem == "no reply" and outcomes[1].content is not None
    quiet.clear()  # it answers again: its count starts over
    messenger.exchange("train", contents)
    quiet.add(2)
    for _ in range(MAX_SILENT_EXCHANGES - 1):
        messenger.exchange("train", contents)
    with pytest.raises(RuntimeError, match=rf"node 2 has sent no reply to {MAX_SILENT_EXCHANGES} exchanges in a row"):
        messenger.exchange("train", contents)


def test_a_reply_whose_arrays_record_is_beyond_the_protocol_is_refused_before_any_array_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One embedding and 1,100 arrays nobody asked for, or arrays beyond the record's bytes in all (here a cap of
    1 kB for 2 x 800 B; the protocol's is 256 MB): the reply is refused as a whole and counted, as the KD strategy
    refuses such answers; an honest one beside it passes."""
    set_task_identity()  # Messages need a run id, as in a ServerApp
    monkeypatch.setattr(vfl_exchange, "MAX_RECORD_BYTES", 1000)
    honest = np.zeros((4, 3), dtype=np.float32)
    crowded = {vp.embedding_key(0): Array(honest)} | {f"x{i}": Array(np.zeros(1, np.float32)) for i in range(1100)}
    big = Array(np.zeros((200,), np.float32))
    replies = {1: crowded, 2: {vp.embedding_key(0): big, "x": big}, 3: {vp.embedding_key(0): Array(honest)}}

    def answer(messages: list[Message]) -> list[Message]:
        out = []
        for m in messages:
            content = RecordDict({vp.ARRAYS: ArrayRecord(replies[m.metadata.dst_node_id])})
            out.append(Message(content, reply_to=m))
        return out

    messenger = Messenger(cast(Grid, ScriptedGrid(answer)), 1.0)
    outcomes = messenger.exchange(vp.EMBED, {node: RecordDict() for node in replies})
    assert outcomes[3].content is not None and outcomes[3].problem is None
    assert outcomes[1].content is None and "1101 arrays, more than 1024" in str(outcomes[1].problem)
    assert outcomes[2].content is None and "declared bytes, more than" in str(outcomes[2].problem)
    assert messenger.rejected["arrays record beyond the protocol"] == 2


def test_batches_per_message_is_refused_where_a_message_would_exceed_the_protocols_array_count() -> None:
    with pytest.raises(ConfigError, match="more than the protocol's 1024"):
        from_mapping(VFLRunConfig, {"training": {"batches_per_message": 600}})


def test_a_request_naming_more_batches_than_a_message_carries_is_refused_whole(run: Run) -> None:
    """More batches than ``training.batches_per_message``: no server of the run sends that; refused before any of
    them is read."""
    party = run.server.features[0]
    batches = [*BATCHES, len(BATCHES)]
    arrays = {vp.ids_key(b): Array(np.arange(16 * b, 16 * b + 16, dtype=np.int64)) for b in batches}
    content = RecordDict({vp.ARRAYS: ArrayRecord(arrays), vp.CONFIG: ConfigRecord({vp.EPOCH: 0, vp.BATCHES: batches})})
    context = run.grid.contexts[party.node_id]
    before = _state(context)
    with pytest.raises(ValueError, match=f"names 3 batches in batches, more than the run's {len(BATCHES)} a message"):
        client_app(Message(content, dst_node_id=party.node_id, message_type=vp.EMBED), context)
    _assert_same(_state(context), before)


def test_a_request_lives_as_long_as_its_exchange_waits() -> None:
    """Flower's default TTL is 12 hours, and a timeout does not shorten it: a request a node had not taken when the
    server counted it unanswered could still be handled hours later."""
    set_task_identity()
    grid = ScriptedGrid(lambda messages: [])
    messenger = Messenger(cast(Grid, grid), 7.0)
    messenger.exchange(vp.EMBED_TEST, {1: RecordDict()})
    assert [m.metadata.ttl for m in grid.sent] == [7.0]
    messenger.exchange(vp.EMBED_TEST, {1: RecordDict()}, timeout=30.0)
    assert [m.metadata.ttl for m in grid.sent] == [30.0]
