"""Property-based fuzzing of the KD server's screen and of the KD ClientApp: malformed replies never crash or count.

The server state is built once (a tiny FedGEMS federation after one round of honest training answers); each example
replaces, duplicates or adds one reply (wrong dtype, shape or stype, a lying header, NaN, inf or huge values, a
wrong identity or ``reply_to``, missing records, an error reply) and screens it with the honest ones. It must not
raise, its reason must be counted, and what reaches the algorithm must be bit for bit the honest answers without
the clients concerned: exactly a round in which they did not answer.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.config import ExperimentConfig
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_app import make_strategy
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Round:
    """One round's state: the strategy after ``configure_train``, what it sent, and the honest replies."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.strategy: KDStrategy = make_strategy(cfg)
        self.grid = LoopbackGrid(client_app, cfg.num_clients, {kd.RUN_CONFIG_KEY: cfg.to_json()})
        self.sent = list(self.strategy.configure_train(1, ArrayRecord(), ConfigRecord(), self.grid))
        for message in self.sent:  # ids as a SuperLink gives them, so that reply_to means something
            message.metadata.__dict__["_message_id"] = f"train-{message.metadata.dst_node_id}"
        self.replies = list(self.grid.send_and_receive(self.sent))
        self.honest, report = self.strategy._screen(1, self.replies)
        assert sorted(self.honest) == list(range(cfg.num_clients)) and report.num_rejected == 0
        self.partition_of = dict(self.strategy._partitions)


@pytest.fixture(scope="module")
def state() -> Round:
    return Round(tiny_config(rounds=1))


@pytest.fixture(scope="module")
def weights_state() -> Round:
    """FedAvg: answers are model weights (and an int64 sample count)."""
    strategy = {"name": "fedavg", "rounds": 1}
    cfg = tiny_config()
    return Round(from_mapping(ExperimentConfig, to_mapping(cfg) | {"strategy": strategy}))


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in reply.content.array_records[kd.ARRAYS].items()}


def _reply(sent: Message, arrays: dict[str, Array] | None, **records: Any) -> Message:
    content = RecordDict({kd.METRICS: MetricRecord({kd.TRAIN_SAMPLES: 1.0})} | records)
    if arrays is not None:
        content[kd.ARRAYS] = ArrayRecord(arrays)
    return Message(content, reply_to=sent)


def _raw(dtype: str, shape: tuple[int, ...], data: bytes, stype: str = "numpy.ndarray") -> Array:
    """An Array whose header says whatever it is told, whatever its bytes are."""
    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


def _npy(value: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=True)
    return buffer.getvalue()


# -- mutations of one honest answer: each returns arrays that must be rejected -----------------------------------
HUGE = st.floats(min_value=2e4, max_value=3.4e38) | st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def bad_arrays(draw: st.DrawFn, logits: np.ndarray) -> dict[str, Array]:
    """A FedGEMS answer is its logits alone, in the order asked (uint8 is a wire dtype: quantised log-probabilities)."""
    kind = draw(st.sampled_from(["dtype", "shape", "value", "extra", "header", "missing"]))
    lg = logits.copy()
    if kind == "dtype":
        lg = lg.astype(draw(st.sampled_from(["float64", "int32", "int64", "int8", "bool", "complex64"])))
    elif kind == "shape":
        shapes = [lg[:-1], lg[:, :-1], lg[None], lg.ravel(), np.concatenate([lg, lg[:1]]), lg[:, :, None]]
        lg = shapes[draw(st.integers(0, len(shapes) - 1))]
    elif kind == "value":
        sign = draw(st.sampled_from([1.0, -1.0]))
        lg[draw(st.integers(0, lg.shape[0] - 1)), draw(st.integers(0, lg.shape[1] - 1))] = sign * draw(HUGE)
        if np.isfinite(lg).all() and np.abs(lg).max() <= 1e4:  # float32 rounding cannot bring 2e4 below the bound
            raise AssertionError("mutation did not leave the bound")
    elif kind == "extra":  # positions of its own choosing, or any other array beside the logits
        name = draw(
            st.sampled_from([kd.POSITIONS, "weights"])
            | st.text(min_size=1, max_size=8).filter(lambda n: n != kd.LOGITS)
        )
        extra = np.arange(lg.shape[0], dtype=np.int64) if name == kd.POSITIONS else lg[:1].copy()
        return {kd.LOGITS: Array(lg), name: Array(extra)}
    elif kind == "header":
        value = lg
        lie = draw(st.sampled_from(["stype", "dtype", "shape", "garbage", "truncated", "pickle"]))
        dtype, shape, data, stype = value.dtype.name, tuple(value.shape), _npy(value), "numpy.ndarray"
        if lie == "stype":
            stype = draw(st.sampled_from(["torch.Tensor", "", "numpy.ndarray "]) | st.text(max_size=8))
            stype = stype if stype != "numpy.ndarray" else "x"
        elif lie == "dtype":
            dtype = draw(st.sampled_from(["nosuch", "object", "O", "float128", "<f4", "int16", "uint64"]))
        elif lie == "shape":
            shape = draw(
                st.sampled_from([(10**9, 10**9), (-1, 10), (value.size + 1,), (), (1,) * 5])
                | st.lists(st.integers(0, 50), max_size=3).map(tuple).filter(lambda s: s != value.shape)
            )
        elif lie == "garbage":
            data = draw(st.binary(max_size=64))
        elif lie == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        else:
            data = _npy(np.array([{"a": 1}, [2, 3]], dtype=object)) if draw(st.booleans()) else pickle.dumps(value)
        return {kd.LOGITS: _raw(dtype, shape, data, stype)}
    else:
        return {} if draw(st.booleans()) else {kd.POSITIONS: Array(np.arange(lg.shape[0], dtype=np.int64))}
    return {kd.LOGITS: Array(lg)}


def _check(state: Round, replies: list[Message], dropped: set[int]) -> None:
    answers, report = state.strategy._screen(1, replies)
    assert report.num_rejected >= 1 and all(count > 0 for count in report.rejected.values())
    assert sorted(answers) == sorted(set(state.honest) - dropped)
    for pid, arrays in answers.items():
        assert arrays.keys() == state.honest[pid].keys()
        for name, value in arrays.items():
            expected = state.honest[pid][name]
            assert value.dtype == expected.dtype and value.tobytes() == expected.tobytes()


@FUZZ
@given(data=st.data())
def test_a_malformed_answer_is_rejected_and_counted(state: Round, data: st.DataObject) -> None:
    victim = data.draw(st.integers(0, len(state.sent) - 1))
    honest = _arrays(state.replies[victim])
    arrays = data.draw(bad_arrays(honest[kd.LOGITS]))
    replies = list(state.replies)
    replies[victim] = _reply(state.sent[victim], arrays)
    _check(state, replies, {state.partition_of[state.sent[victim].metadata.dst_node_id]})


@FUZZ
@given(data=st.data())
def test_a_reply_with_a_wrong_identity_is_rejected_and_counted(state: Round, data: st.DataObject) -> None:
    victim = data.draw(st.integers(0, len(state.sent) - 1))
    pid = state.partition_of[state.sent[victim].metadata.dst_node_id]
    kind = data.draw(st.sampled_from(["unknown node", "reply_to", "other's message", "duplicate", "error", "extra"]))
    replies, dropped = list(state.replies), {pid}
    forged = _reply(state.sent[victim], {name: Array(v) for name, v in _arrays(state.replies[victim]).items()})
    if kind == "unknown node":
        node = data.draw(st.integers(0, 2**63 - 1).filter(lambda n: n not in state.partition_of))
        forged.metadata.__dict__["_src_node_id"] = node
        replies[victim] = forged
    elif kind == "reply_to":
        stale = data.draw(st.sampled_from(["", "train-0", "old"]) | st.text(max_size=12))
        forged.metadata.__dict__["_reply_to_message_id"] = stale
        replies[victim] = forged
    elif kind == "other's message":
        other = data.draw(st.integers(0, len(state.sent) - 1).filter(lambda i: i != victim))
        forged.metadata.__dict__["_reply_to_message_id"] = state.sent[other].metadata.message_id
        replies[victim] = forged
    elif kind == "duplicate":
        replies.insert(data.draw(st.integers(0, len(replies))), replies[victim])
    elif kind == "error":
        replies[victim] = Message(Error(code=0, reason=data.draw(st.text(max_size=20))), reply_to=state.sent[victim])
    else:  # another node's honest answer, sent again as if from the victim: both the victim's answers are dropped
        other = data.draw(st.integers(0, len(state.sent) - 1).filter(lambda i: i != victim))
        copied = _reply(state.sent[victim], {n: Array(v) for n, v in _arrays(state.replies[other]).items()})
        replies.append(copied)
    _check(state, replies, dropped)


@FUZZ
@given(data=st.data())
def test_malformed_weights_are_rejected_and_counted(weights_state: Round, data: st.DataObject) -> None:
    state = weights_state
    victim = data.draw(st.integers(0, len(state.sent) - 1))
    honest = _arrays(state.replies[victim])
    name = data.draw(st.sampled_from(sorted(n for n in honest if n != kd.NUM_EXAMPLES)))
    value = honest[name].copy()
    kind = data.draw(st.sampled_from(["dtype", "shape", "value", "header", "missing"]))
    arrays = {n: Array(v) for n, v in honest.items()}
    if kind == "dtype":
        arrays[name] = Array(value.astype(data.draw(st.sampled_from(["float64", "float16", "int32", "bool"]))))
    elif kind == "shape":
        arrays[name] = Array(np.ascontiguousarray(data.draw(st.sampled_from([value[None], value.ravel()[:-1]]))))
    elif kind == "value":
        flat = value.reshape(-1)
        flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(st.sampled_from([1.0, -1.0])) * data.draw(HUGE)
        arrays[name] = Array(value)
    elif kind == "header":
        dtype = data.draw(st.sampled_from(["float64", "nosuch", "object"]))
        arrays[name] = _raw(dtype, tuple(value.shape), _npy(value))
    else:
        arrays.pop(name)
    replies = list(state.replies)
    replies[victim] = _reply(state.sent[victim], arrays)
    _check(state, replies, {state.partition_of[state.sent[victim].metadata.dst_node_id]})


def test_extreme_logits_leave_the_server_as_if_the_client_had_not_answered(state: Round) -> None:
    honest = _arrays(state.replies[0])
    extreme = np.full_like(honest[kd.LOGITS], 2e38)
    extreme[:, 0] = -2e38
    bad = _reply(state.sent[0], {kd.LOGITS: Array(extreme)})
    without, poisoned = copy.deepcopy(state.strategy), copy.deepcopy(state.strategy)
    without.aggregate_train(1, state.replies[1:])
    poisoned.aggregate_train(1, [bad, *state.replies[1:]])
    assert poisoned._screening.num_rejected == 1
    for pid in range(state.cfg.num_clients):
        left = poisoned.server.evaluate_instruction(1, pid).arrays
        right = without.server.evaluate_instruction(1, pid).arrays
        assert all(np.isfinite(v).all() and v.tobytes() == right[k].tobytes() for k, v in left.items())


# -- the ClientApp: a malformed instruction is a clear ValueError (Flower's error reply), never a coercion ---------
@st.composite
def bad_instructions(draw: st.DrawFn) -> tuple[str, RecordDict]:
    message_type = draw(st.sampled_from(["train", "evaluate"]))
    config: dict[str, Any] = {kd.SERVER_ROUND: 1, kd.LOGITS_DTYPE: "float32", kd.DISTILL: False}
    arrays: dict[str, Array] = {kd.POSITIONS: Array(np.arange(5, dtype=np.int64))}
    kind = draw(st.sampled_from(["round", "distill", "positions", "header", "values", "missing", "config"]))
    if kind == "round":  # the run has 1 round; a round past it once named a file too long to write
        config[kd.SERVER_ROUND] = draw(st.sampled_from(["1", 1.0, 0, -3, True, 2.5, 2, 10**300]))
    elif kind == "config":  # not dropped for a default: bytes for the dtype once gave float32 logits
        key = draw(st.sampled_from([kd.LOGITS_DTYPE, kd.EVALUATE, "anything"]))
        config[key] = draw(st.sampled_from([b"uint8", ["uint8"], [False], b"\x00"]))
    elif kind == "distill":
        message_type = "evaluate"
        config[kd.DISTILL] = draw(st.sampled_from(["false", "true", 0, 1, 1.0, "", b"\x00"]))
    elif kind == "positions":
        wrong = [np.arange(5.0), np.ones(5, dtype=bool), np.arange(6).reshape(2, 3), -np.ones(3, dtype=np.int64)]
        arrays[kd.POSITIONS] = Array(wrong[draw(st.integers(0, len(wrong) - 1))])
    elif kind == "header":
        arrays[kd.POSITIONS] = _raw(draw(st.sampled_from(["nosuch", "int64"])), (10**9,), draw(st.binary(max_size=16)))
    elif kind == "values":
        message_type = "evaluate"
        config[kd.DISTILL] = True
        logits = np.zeros((5, 10), dtype=np.float32)
        logits[0, 0] = draw(HUGE)
        arrays[kd.SERVER_LOGITS] = Array(logits)
    else:
        keys = [kd.SERVER_ROUND, kd.DISTILL] if message_type == "evaluate" else [kd.SERVER_ROUND]
        config.pop(draw(st.sampled_from(keys)))
    return message_type, RecordDict({kd.CONFIG: ConfigRecord(config), kd.ARRAYS: ArrayRecord(arrays)})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_instructions())
def test_a_malformed_instruction_raises_a_clear_value_error(state: Round, case: tuple[str, RecordDict]) -> None:
    message_type, content = case
    context: Context = state.grid.contexts[state.sent[0].metadata.dst_node_id]
    before = copy.deepcopy(context.state)
    message = Message(content, dst_node_id=context.node_id, message_type=message_type)
    with pytest.raises(ValueError, match=r"\S"):
        client_app(message, context)
    assert context.state == before


def test_a_distillation_delivered_twice_is_taken_in_once(state: Round) -> None:
    """Flower delivers a message once; a second delivery of the same evaluate message must not distil again."""
    strategy = copy.deepcopy(state.strategy)
    strategy.aggregate_train(1, state.replies)
    sent = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), state.grid))[0]
    context = copy.deepcopy(state.grid.contexts[sent.metadata.dst_node_id])
    first = client_app(sent, context)
    assert not first.has_error() and kd.DISTILL_LOSS in first.content.metric_records[kd.METRICS]
    after = copy.deepcopy(context.state)
    with pytest.raises(ValueError, match="has taken in round 1's knowledge already"):
        client_app(sent, context)
    assert context.state == after


# -- the evaluate phase: error replies, lies about identity or accuracy, stale replies --------------------------
def test_bad_evaluate_replies_count_as_no_reply(state: Round) -> None:
    strategy = copy.deepcopy(state.strategy)
    strategy.aggregate_train(1, state.replies)
    grid = copy.deepcopy(state.grid)  # the clients distil in this phase, once: the shared contexts stay as trained
    sent = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    for message in sent:
        message.metadata.__dict__["_message_id"] = f"evaluate-{message.metadata.dst_node_id}"
    honest = list(grid.send_and_receive(sent))
    without = copy.deepcopy(strategy)
    without.aggregate_evaluate(1, honest[1:])

    def lying(metrics: dict[str, Any], to: Message = sent[0]) -> Message:
        return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=to)

    stale = lying({kd.PARTITION_ID: 0, kd.ACCURACY: 0.5, kd.PERSONALISED_ACCURACY: 0.5})
    stale.metadata.__dict__["_reply_to_message_id"] = "train-1000"
    unknown = lying({kd.PARTITION_ID: 7, kd.ACCURACY: 0.5, kd.PERSONALISED_ACCURACY: 0.5})
    unknown.metadata.__dict__["_src_node_id"] = 12345
    others = lying({kd.PARTITION_ID: 0, kd.ACCURACY: 0.5, kd.PERSONALISED_ACCURACY: 0.5}, to=sent[1])
    others.metadata.__dict__["_src_node_id"] = sent[0].metadata.dst_node_id
    bad = [
        Message(Error(code=0, reason="ValueError: boom"), reply_to=sent[0]),
        lying({kd.PARTITION_ID: 7, kd.ACCURACY: 100.0, kd.PERSONALISED_ACCURACY: 0.5}),
        lying({kd.PARTITION_ID: 0, kd.ACCURACY: -1.0, kd.PERSONALISED_ACCURACY: 2.0}),
        # An int past float's range: simulation hands records over by pickle, so no 64-bit limit applies.
        lying({kd.PARTITION_ID: 0, kd.ACCURACY: 10**400, kd.PERSONALISED_ACCURACY: 0.5}),
        Message(RecordDict({kd.ARRAYS: ArrayRecord({kd.ACCURACY: Array(np.ones(3))})}), reply_to=sent[0]),
        stale,
        unknown,
        others,
    ]
    for reply in bad:
        poisoned = copy.deepcopy(strategy)
        poisoned.aggregate_evaluate(1, [reply, *honest[1:]])
        left, right = poisoned.history[-1], without.history[-1]
        # The same figures as without it, and it is counted: a round's figures from fewer clients show as such.
        assert (left["n_eval_dropped"], right["n_eval_dropped"]) == (1, 0)
        skip = ("wall_seconds", "n_eval_dropped")
        assert {k: v for k, v in left.items() if k not in skip} == {k: v for k, v in right.items() if k not in skip}


def test_weights_beyond_the_bound_are_refused() -> None:
    from fl_kd.kd.weights import check_weights

    reference = {"w": np.zeros((2, 3), dtype=np.float32)}
    assert check_weights({"w": np.ones((2, 3), dtype=np.float32)}, reference) is None
    for value in (2e38, -1e20, 1.5e4):
        assert "bound" in str(check_weights({"w": np.full((2, 3), value, dtype=np.float32)}, reference))
    assert check_weights({"w": np.full((2, 3), 1.5e4, dtype=np.float32)}, reference, max_abs=2e4) is None


def test_an_absurd_count_of_training_samples_is_booked_as_none_and_never_stops_the_round(state: Round) -> None:
    """A count near the float limit, reported in both phases, once overflowed the round's cost figures."""

    def with_samples(reply: Message, sent: Message, count: float | None) -> Message:
        """``reply`` again, with ``count`` as its training samples (none when None)."""
        found = reply.content.metric_records[kd.METRICS]
        metrics = {k: v for k, v in found.items() if k != kd.TRAIN_SAMPLES}
        content = RecordDict({kd.METRICS: MetricRecord(metrics | ({} if count is None else {kd.TRAIN_SAMPLES: count}))})
        if kd.ARRAYS in reply.content.array_records:
            content[kd.ARRAYS] = ArrayRecord(dict(reply.content.array_records[kd.ARRAYS].items()))
        return Message(content, reply_to=sent)

    rows = {}
    for count in (None, 1.7e308, -5.0):
        strategy = copy.deepcopy(state.strategy)
        strategy.aggregate_train(1, [with_samples(state.replies[0], state.sent[0], count), *state.replies[1:]])
        grid = copy.deepcopy(state.grid)  # the clients distil in this phase: each case starts from the same state
        sent = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
        for message in sent:
            message.metadata.__dict__["_message_id"] = f"evaluate-{message.metadata.dst_node_id}"
        replies = list(grid.send_and_receive(sent))
        replies[0] = with_samples(replies[0], sent[0], count)
        strategy.aggregate_evaluate(1, replies)
        rows[count] = {k: v for k, v in strategy.history[-1].items() if k != "wall_seconds"}
    assert all(np.isfinite(v) for v in rows[1.7e308].values() if isinstance(v, float))
    assert rows[1.7e308] == rows[None] == rows[-5.0]  # booked as if the client had reported no count
