"""Reading a record without trusting it: the whole record is checked from its headers before any array decodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_kd.clients.kd_app import _instruction
from fl_kd.config import from_mapping, to_mapping
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import build_federation
from fl_kd.protocol import MAX_RECORD_ARRAYS, ProtocolError, decode_array, decode_record, party_text, payload_nbytes
from tests.kd_configs import tiny_config
from tests.test_fuzz_kd import Round


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shapes of every array decoded while the test runs."""
    seen: list[tuple[int, ...]] = []
    original = Array.numpy

    def counting(self: Array) -> np.ndarray:
        seen.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(Array, "numpy", counting)
    return seen


def _content(arrays: dict[str, Array]) -> RecordDict:
    return RecordDict({kd.ARRAYS: ArrayRecord(arrays)})


def _lying(shape: tuple[int, ...]) -> Array:
    """A float32 header of ``shape`` over bytes that are no array at all."""
    return Array(dtype="float32", shape=shape, stype="numpy.ndarray", data=b"\x00" * 16)


def test_an_array_that_was_not_asked_for_is_refused_before_anything_decodes(decodes: list[tuple[int, ...]]) -> None:
    content = _content({kd.LOGITS: Array(np.zeros((3, 2), np.float32)), "surprise": _lying((4,))})
    with pytest.raises(ProtocolError, match="not asked for: surprise"):
        decode_record(content, kd.ARRAYS, names={kd.LOGITS})
    assert decodes == []
    # Without names the same record fails on the lying array itself, named.
    with pytest.raises(ProtocolError, match="array 'surprise'"):
        decode_record(content, kd.ARRAYS)


def test_a_missing_name_is_left_to_the_caller() -> None:
    content = _content({kd.LOGITS: Array(np.ones((3, 2), np.float32))})
    arrays = decode_record(content, kd.ARRAYS, names={kd.LOGITS, kd.POSITIONS})
    assert list(arrays) == [kd.LOGITS] and np.array_equal(arrays[kd.LOGITS], np.ones((3, 2), np.float32))
    assert decode_record(RecordDict(), kd.ARRAYS) == {}


def test_too_many_arrays_are_refused_before_anything_decodes(decodes: list[tuple[int, ...]]) -> None:
    many = {f"a{i}": Array(np.zeros(1, np.int8)) for i in range(MAX_RECORD_ARRAYS + 1)}
    with pytest.raises(ProtocolError, match=f"{MAX_RECORD_ARRAYS + 1} arrays, more than {MAX_RECORD_ARRAYS}"):
        decode_record(_content(many), kd.ARRAYS)
    assert decodes == []
    del many["a0"]
    assert len(decode_record(_content(many), kd.ARRAYS)) == MAX_RECORD_ARRAYS


def test_arrays_each_within_the_cap_but_too_large_together_are_refused_before_decoding(
    decodes: list[tuple[int, ...]],
) -> None:
    content = _content({"a": Array(np.zeros(60, np.float32)), "b": Array(np.zeros(60, np.float32))})
    with pytest.raises(ProtocolError, match="declares 480 array bytes, more than 400"):
        decode_record(content, kd.ARRAYS, max_bytes=400)
    assert decodes == []
    assert set(decode_record(content, kd.ARRAYS, max_bytes=480)) == {"a", "b"}


def test_the_payload_is_counted_from_the_headers_without_decoding(decodes: list[tuple[int, ...]]) -> None:
    honest = {"x": Array(np.zeros((5, 3), np.float32)), "y": Array(np.arange(4, dtype=np.int64))}
    assert payload_nbytes(_content(honest)) == 5 * 3 * 4 + 4 * 8
    # A header claiming 4 GB over 16 bytes counts as the 16 bytes it sent; a foreign stype by its raw bytes too.
    lying = {"big": _lying((2**30,)), "odd": Array(dtype="float32", shape=(1,), stype="pickle", data=b"12345")}
    assert payload_nbytes(_content(lying)) == 16 + 5
    assert decodes == []


def test_bytes_that_do_not_fit_the_header_are_refused_before_decoding_and_counted_as_sent(
    decodes: list[tuple[int, ...]],
) -> None:
    """A header of one float over a megabyte: the payload would decode whole before its shape was compared."""
    large = Array(np.zeros(2**18, np.float32)).data
    too_many = Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=large)
    too_few = Array(dtype="float32", shape=(2**19,), stype="numpy.ndarray", data=large)
    for lying in (too_many, too_few):
        with pytest.raises(ProtocolError, match=f"sends {len(large)} bytes for a declared"):
            decode_array(lying)
    assert decodes == []
    assert payload_nbytes(_content({"x": too_many, "y": too_few})) == 2 * len(large)
    assert decode_array(Array(dtype="float32", shape=(2**18,), stype="numpy.ndarray", data=large)).shape == (2**18,)


def test_the_kd_server_drops_an_answer_of_many_arrays_unread_and_keeps_the_others(
    decodes: list[tuple[int, ...]],
) -> None:
    state = Round(tiny_config(rounds=1))
    target = state.replies[0]
    flood = {f"x{i}": Array(np.zeros(1, np.float32)) for i in range(MAX_RECORD_ARRAYS + 1)}
    content = RecordDict({kd.ARRAYS: ArrayRecord(flood), kd.METRICS: MetricRecord({kd.TRAIN_SAMPLES: 1.0})})
    sent = next(m for m in state.sent if m.metadata.dst_node_id == target.metadata.src_node_id)
    replies = [Message(content, reply_to=sent), *state.replies[1:]]
    decodes.clear()
    answers, report = state.strategy._screen(1, replies)
    flooded = state.partition_of[target.metadata.src_node_id]
    assert flooded not in answers and sorted(answers) == sorted(set(state.honest) - {flooded})
    assert [reason for reason in report.rejected if "more than" in reason] and report.num_rejected == 1
    assert all(shape != (1,) for shape in decodes)  # only the honest logits decoded


def test_the_kd_clientapp_refuses_an_instruction_of_too_many_arrays() -> None:
    flood = {f"x{i}": Array(np.zeros(1, np.float32)) for i in range(MAX_RECORD_ARRAYS + 1)}
    content = RecordDict({kd.ARRAYS: ArrayRecord(flood), kd.CONFIG: ConfigRecord({kd.SERVER_ROUND: 1})})
    message = Message(content, dst_node_id=1, message_type="train")
    cfg = tiny_config()
    client = get_algorithm(cfg.strategy.name).build_client(cfg, build_federation(cfg), 0)
    with pytest.raises(ValueError, match="more than"):
        _instruction(message, None, client, "train")  # refused before the context is read


@pytest.mark.parametrize("strategy", ["fedgems", "fedavg", "fedavg_server_model", "feddf", "fedet", "fedmd", "dsfl"])
def test_every_algorithm_names_the_arrays_its_honest_clients_send(strategy: str) -> None:
    cfg = tiny_config(rounds=1)
    cfg = from_mapping(ExperimentConfig, to_mapping(cfg) | {"strategy": {"name": strategy, "rounds": 1}})
    state = Round(cfg)  # every honest answer passes the screen, names checked before decoding
    for reply in state.replies:
        names = state.strategy.server.answer_names(1, state.partition_of[reply.metadata.src_node_id])
        assert names == set(reply.content.array_records[kd.ARRAYS])


@pytest.mark.parametrize(
    "field", [{"dtype": "float32" + "x" * 1_000_000}, {"shape": (0,) * 1_000_000}, {"stype": "s" * 1_000_000}]
)
def test_what_a_party_declares_is_quoted_short_in_the_error(field: dict[str, Any]) -> None:
    """The error travels into the run's history, its logs and results.json, once per batch: a megabyte a time."""
    data = Array(np.zeros(2, dtype=np.float32)).data  # bytes that decode, to an array of another shape
    array = Array(**{"dtype": "float32", "shape": (2,), "stype": "numpy.ndarray", "data": data, **field})
    with pytest.raises(ProtocolError) as refused:
        decode_array(array)
    assert len(str(refused.value)) < 200


def test_a_reason_that_does_not_print_is_described_not_raised() -> None:
    assert party_text([10**5000]) == "a list that does not print"
    assert party_text(10**5000).startswith("an int of") and len(party_text("x" * 10**6)) < 400
