"""Selective teacher fusion: hand-worked weights and properties of the weighting rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_kd.kd.fedgems.selection import entropy, select_teacher


def _h(probabilities: list[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities)


# Three clients on two samples with labels [0, 1]:
# sample 0: client 0 right with p = [0.75, 0.25], client 1 right with p = [0.9, 0.1], client 2 wrong;
# sample 1: every client predicts class 0, so nobody is right.
CLIENT_LOGITS = torch.tensor(
    [
        [[math.log(3.0), 0.0], [1.0, 0.0]],
        [[math.log(9.0), 0.0], [2.0, 0.0]],
        [[0.0, 2.0], [0.5, 0.0]],
    ]
)
LABELS = torch.tensor([0, 1])


def test_entropy_by_hand() -> None:
    values = entropy(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]))
    assert values[0].item() == pytest.approx(_h([0.75, 0.25]), abs=1e-6)
    assert values[1].item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_inverse_entropy_weights_by_hand() -> None:
    selected = select_teacher(CLIENT_LOGITS, LABELS)
    h0, h1 = _h([0.75, 0.25]), _h([0.9, 0.1])
    w0 = (1 / h0) / (1 / h0 + 1 / h1)
    w1 = (1 / h1) / (1 / h0 + 1 / h1)
    assert selected.weights[:, 0].tolist() == pytest.approx([w0, w1, 0.0], abs=1e-6)
    assert selected.has_teacher.tolist() == [True, False]
    assert selected.weights[:, 1].tolist() == [0.0, 0.0, 0.0]
    assert selected.logits[0].tolist() == pytest.approx([w0 * math.log(3.0) + w1 * math.log(9.0), 0.0], abs=1e-6)
    assert selected.logits[1].tolist() == [0.0, 0.0]


def test_aijack_softmax_keeps_wrong_clients() -> None:
    selected = select_teacher(CLIENT_LOGITS, LABELS, weighting="aijack_softmax")
    h0, h1 = _h([0.75, 0.25]), _h([0.9, 0.1])
    scores = [math.exp(1 / h0), math.exp(1 / h1), math.exp(0.0)]
    assert selected.weights[:, 0].tolist() == pytest.approx([s / sum(scores) for s in scores], abs=1e-6)
    # No client is right on sample 1, yet each keeps weight e^0 / 3: the flaw the default rule fixes.
    assert selected.weights[:, 1].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert selected.has_teacher.tolist() == [True, True]


def test_an_unknown_label_fuses_every_answering_client_by_confidence() -> None:
    # Label -1 (a held-out sample): nobody is judged, so client 2, wrong on sample 0's true label, teaches too, and
    # sample 1, where nobody matches its label, gets a teacher; the result cannot depend on the hidden label.
    available = torch.tensor([[True, True], [True, False], [True, True]])
    selected = select_teacher(CLIENT_LOGITS, torch.tensor([-1, -1]), available=available)
    for sample in range(2):
        inverse = torch.stack([1.0 / entropy(CLIENT_LOGITS[k, sample]) for k in range(3)]) * available[:, sample]
        assert selected.weights[:, sample].tolist() == pytest.approx((inverse / inverse.sum()).tolist(), abs=1e-6)
    assert selected.has_teacher.tolist() == [True, True]
    # Known labels keep the selection: only sample 1 is fused label-free.
    mixed = select_teacher(CLIENT_LOGITS, torch.tensor([0, -1]), available=available)
    assert mixed.weights[2, 0].item() == 0.0 and mixed.weights[2, 1].item() > 0.0


def test_unavailable_answers_are_ignored_even_if_nan() -> None:
    logits = CLIENT_LOGITS.clone()
    logits[1, 0] = float("nan")
    available = torch.tensor([[True, True], [False, True], [True, True]])
    selected = select_teacher(logits, LABELS, available=available)
    assert selected.weights[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert selected.logits[0].tolist() == pytest.approx([math.log(3.0), 0.0], abs=1e-6)
    assert bool(torch.isfinite(selected.logits).all())


def test_one_hot_confident_client_does_not_overflow() -> None:
    logits = torch.tensor([[[200.0, 0.0]], [[1.0, 0.0]]])  # entropy of client 0 underflows to 0
    selected = select_teacher(logits, torch.tensor([0]))
    assert bool(torch.isfinite(selected.weights).all())
    assert selected.weights[:, 0].sum().item() == pytest.approx(1.0)
    assert selected.weights[0, 0].item() > 0.99


def test_no_clients_gives_no_teacher() -> None:
    selected = select_teacher(torch.zeros(0, 3, 4), torch.tensor([0, 1, 2]))
    assert selected.has_teacher.tolist() == [False, False, False]
    assert selected.logits.shape == (3, 4) and selected.weights.shape == (0, 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\(K, N, C\)"):
        select_teacher(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        select_teacher(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="available"):
        select_teacher(torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), available=torch.ones(3, 2).bool())
    with pytest.raises(ValueError, match="fusion rule .mean."):
        select_teacher(torch.zeros(2, 3, 4), torch.zeros(3, dtype=torch.long), weighting="mean")


@st.composite
def _fusion_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 4))
    logits = draw(arrays(np.float32, (k, n, c), elements=st.floats(-30, 30, width=32)))
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    available = draw(arrays(np.bool_, (k, n)))
    return logits, labels, available


@settings(max_examples=60, deadline=None)
@given(_fusion_inputs())
def test_inverse_entropy_weight_properties(inputs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    logits, labels, available = (torch.from_numpy(a) for a in inputs)
    selected = select_teacher(logits, labels, available=available)
    qualified = (logits.argmax(dim=-1) == labels) & available
    weights = selected.weights
    assert bool((weights >= 0).all())
    assert bool((weights[~qualified] == 0).all())  # wrong or silent clients never teach
    assert selected.has_teacher.tolist() == qualified.any(dim=0).tolist()
    sums = weights.sum(dim=0)
    assert torch.allclose(sums[selected.has_teacher], torch.ones(()), atol=1e-5)
    assert bool((sums[~selected.has_teacher] == 0).all())
    assert bool(torch.isfinite(selected.logits).all())
    # The teacher is a convex combination of correct clients' logits, so it lies within their range.
    for i in torch.nonzero(selected.has_teacher).flatten().tolist():
        rows = logits[qualified[:, i], i]
        assert bool((selected.logits[i] <= rows.max(dim=0).values + 1e-4).all())
        assert bool((selected.logits[i] >= rows.min(dim=0).values - 1e-4).all())
