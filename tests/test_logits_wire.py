"""The logits' wire formats: float32, float16, uint8 and uint5 (quantised log-probabilities), and how answers are
checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_kd.kd import protocol as kd
from fl_kd.kd.adversary import ADVERSARIES
from fl_kd.kd.adversary.config import AdversaryConfig
from fl_kd.kd.losses import kd_loss
from fl_kd.kd.roles import Answer, Instruction
from fl_kd.kd.training import LOG_PROB_RANGE, UINT5_RANGE, check_logits, from_wire, packed_size, to_wire
from fl_kd.kd.validation import check_answer_logits


def _logits(seed: int = 0, rows: int = 200, classes: int = 10, scale: float = 6.0) -> torch.Tensor:
    return scale * torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed))


def test_uint8_sends_a_quarter_of_float32_and_decodes_to_the_log_probabilities() -> None:
    logits = _logits()
    wire = to_wire(logits, np.uint8)
    assert wire.dtype == np.uint8 and wire.nbytes * 4 == to_wire(logits, np.float32).nbytes
    decoded = torch.from_numpy(from_wire(wire))
    exact = torch.log_softmax(logits, dim=-1)
    kept = exact > -LOG_PROB_RANGE
    step = LOG_PROB_RANGE / 255
    assert (decoded[kept] - exact[kept]).abs().max() <= step / 2 + 1e-6
    assert torch.all(decoded[~kept] == -LOG_PROB_RANGE)  # far-off classes clipped to the floor
    # What a receiver computes from them: the same softmax, KD loss and argmax, rounding aside.
    assert (torch.softmax(decoded, -1) - torch.softmax(logits, -1)).abs().max() < 0.02
    student = _logits(seed=1, scale=2.0)
    assert float(kd_loss(student, decoded, 1.0)) == pytest.approx(float(kd_loss(student, logits, 1.0)), rel=0.01)
    top2 = exact.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > step
    assert torch.equal(decoded.argmax(-1)[clear], logits.argmax(-1)[clear])


def test_a_row_shift_changes_no_uint8_byte_and_float_wires_decode_as_they_are() -> None:
    logits = _logits(seed=2)
    assert np.array_equal(to_wire(logits, np.uint8), to_wire(logits + 7.5, np.uint8))
    half = to_wire(logits, np.float16)
    assert from_wire(half).dtype == np.float32 and np.array_equal(from_wire(half), half.astype(np.float32))
    assert to_wire(torch.zeros(0, 10), np.uint8).shape == (0, 10)


def test_check_logits_decodes_uint8_and_still_refuses_other_integers() -> None:
    wire = to_wire(_logits(rows=5), np.uint8)
    decoded = check_logits("answer", wire, (5, 10))
    assert decoded.dtype == torch.float32 and float(decoded.max()) <= 0.0
    with pytest.raises(ValueError, match="shape"):
        check_logits("answer", wire[:4], (5, 10))
    with pytest.raises(ValueError, match="floating point or uint8"):
        check_logits("answer", wire.astype(np.int16), (5, 10))


def test_check_logits_refuses_a_float64_beyond_float32s_range() -> None:
    """Finite as float64, inf as the float32 that training reads: refused, not passed on as inf."""
    logits = np.zeros((5, 10))
    logits[2, 3] = 1e39
    with pytest.raises(ValueError, match="non-finite"):
        check_logits("answer", logits, (5, 10))
    assert torch.equal(check_logits("answer", np.full((5, 10), 1e38), (5, 10)), torch.full((5, 10), 1e38))


def test_uint5_packs_32_levels_into_5_bits_and_decodes_to_the_log_probabilities() -> None:
    logits = _logits(rows=203)  # 203 x 10 x 5 bits: the last byte is half padding
    wire = to_wire(logits, "uint5")
    assert wire.dtype == np.uint8 and wire.shape == (packed_size(203, 10),) == (1269,)
    assert wire.nbytes * 32 <= to_wire(logits, np.float32).nbytes * 5 + 32
    decoded = torch.from_numpy(from_wire(wire, 10))
    assert decoded.shape == (203, 10)
    exact = torch.log_softmax(logits, dim=-1)
    kept = exact > -UINT5_RANGE
    level = UINT5_RANGE / 31
    # Half a level, plus the rounding of each level to its uint8 code.
    assert (decoded[kept] - exact[kept]).abs().max() <= level / 2 + LOG_PROB_RANGE / 255 / 2 + 1e-6
    assert decoded.min() >= -UINT5_RANGE - LOG_PROB_RANGE / 255  # far-off classes at the lowest level
    assert len(torch.unique(decoded)) <= 32
    # Each level is a uint8 code: an unpacked uint5 answer reads as a uint8 one.
    codes = decoded.numpy() / (-LOG_PROB_RANGE / 255)
    assert np.abs(codes - np.rint(codes)).max() < 1e-3 and codes.max() <= 255
    student = _logits(seed=1, rows=203, scale=2.0)
    assert float(kd_loss(student, decoded, 1.0)) == pytest.approx(float(kd_loss(student, logits, 1.0)), rel=0.05)
    top2 = exact.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * level
    assert torch.equal(decoded.argmax(-1)[clear], logits.argmax(-1)[clear])
    # Rows are packed one after another: any prefix of rows decodes to the same rows.
    assert np.array_equal(from_wire(to_wire(logits[:7], "uint5"), 10), decoded[:7].numpy())
    assert to_wire(torch.zeros(0, 10), "uint5").shape == (0,) and from_wire(np.zeros(0, np.uint8), 10).shape == (0, 10)


def test_packed_uint5_is_checked_against_the_rows_asked_and_needs_the_class_count() -> None:
    wire = to_wire(_logits(rows=5), "uint5")
    assert check_logits("answer", wire, (5, 10)).shape == (5, 10)
    with pytest.raises(ValueError, match="shape"):
        check_logits("answer", wire[:-1], (5, 10))
    with pytest.raises(ValueError, match="shape"):
        check_logits("answer", wire, (4, 10))  # 4 rows take 25 bytes, not 32
    with pytest.raises(ValueError, match="number of classes"):
        from_wire(wire)
    with pytest.raises(ValueError, match="at least 2 classes"):
        from_wire(wire, 1)  # one class: 5 bits a row, and 2 bytes could hold 2 rows or 3
    with pytest.raises(ValueError, match="at least 2 classes"):
        to_wire(torch.zeros(3, 1), "uint5")
    assert check_answer_logits(5, wire, 10) is None
    assert "packed uint5" in str(check_answer_logits(5, wire[:-1], 10))
    assert "packed uint5" in str(check_answer_logits(6, wire, 10))
    assert "shape" in str(check_answer_logits(5, wire.astype(np.float32), 10))


@pytest.mark.parametrize("asked", ["float32", "float16", "uint8", "uint5"])
def test_an_answer_in_another_wire_dtype_than_asked_is_refused(asked: str) -> None:
    """Raw logits and quantised log-probabilities must not meet in one fusion: only the asked wire passes."""
    logits = _logits(rows=5)
    for sent in ("float32", "float16", "uint8", "uint5"):
        reason = check_answer_logits(5, to_wire(logits, sent), 10, wire=asked)
        assert (reason is None) == (sent == asked), (sent, reason)
        if sent != asked:
            assert reason == f"logits sent as {sent}, asked as {asked}"


@pytest.mark.parametrize(
    ("logits", "reason"),
    [
        (np.zeros((3, 10), np.uint8), None),
        (np.full((3, 10), 255, np.uint8), None),  # every code is a valid log-probability
        (np.zeros((3, 10), np.float16), None),
        (np.zeros((3, 10), np.int8), "dtype"),
        (np.zeros((2, 10), np.uint8), "shape"),
        (np.full((3, 10), np.inf, np.float32), "NaN or inf"),
        (None, "missing"),
    ],
)
def test_an_answer_is_its_logits_in_the_order_asked(logits: np.ndarray | None, reason: str | None) -> None:
    found = check_answer_logits(3, logits, 10)
    assert found is None if reason is None else reason in str(found)


@pytest.mark.parametrize("dtype", ["uint8", "uint5"])
def test_a_logit_attack_on_a_quantised_answer_is_sent_as_such_and_decodes_to_the_attack(dtype: str) -> None:
    honest = _logits(rows=6)
    answer = Answer({kd.LOGITS: to_wire(honest, dtype)})
    query = Instruction({kd.POSITIONS: np.arange(6, dtype=np.int64)})
    behaviour = ADVERSARIES.get("negated_logits")(AdversaryConfig(name="negated_logits"), 10, torch.zeros(6))
    corrupted = behaviour.corrupt(answer, query, np.random.default_rng(0)).arrays[kd.LOGITS]
    assert corrupted.dtype == np.uint8 and corrupted.shape == answer.arrays[kd.LOGITS].shape
    assert check_answer_logits(6, corrupted, 10) is None
    # The server decodes the negation of what the client would have sent: its least likely class is now the top.
    sent, honest_sent = from_wire(corrupted, 10), from_wire(answer.arrays[kd.LOGITS], 10)
    least = honest_sent.min(-1, keepdims=True)
    assert all(sent[row].argmax() in np.flatnonzero(honest_sent[row] == least[row]) for row in range(6))
