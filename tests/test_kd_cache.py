"""Knowledge cache: update/get semantics, validation and state round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_kd.kd.cache import KnowledgeCache


def test_update_get_and_overwrite() -> None:
    cache = KnowledgeCache(num_samples=4, num_classes=3)
    assert cache.filled.tolist() == [False] * 4 and cache.num_filled == 0
    cache.update(np.array([1, 3]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert cache.filled.tolist() == [False, True, False, True]
    assert cache.get([3, 1]).tolist() == [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]
    cache.update(torch.tensor([1]), torch.tensor([[9.0, 9.0, 9.0]]))
    assert cache.get([1]).tolist() == [[9.0, 9.0, 9.0]]
    assert cache.num_filled == 2


def test_get_empty_position_raises_and_lookup_gives_zeros() -> None:
    cache = KnowledgeCache(3, 2)
    cache.update([0], torch.tensor([[1.0, -1.0]]))
    with pytest.raises(KeyError, match="empty"):
        cache.get([0, 2])
    logits, filled = cache.lookup([2, 0])
    assert logits.tolist() == [[0.0, 0.0], [1.0, -1.0]]
    assert filled.tolist() == [False, True]


def test_stored_values_are_detached_copies() -> None:
    cache = KnowledgeCache(2, 2)
    source = torch.tensor([[1.0, 2.0]], requires_grad=True)
    cache.update([0], source * 1)
    out = cache.get([0])
    out += 5
    assert cache.get([0]).tolist() == [[1.0, 2.0]]
    assert not cache.get([0]).requires_grad
    cache.filled[0] = False  # mutating the returned mask must not change the cache
    assert cache.filled[0]


def test_state_dict_round_trip() -> None:
    cache = KnowledgeCache(3, 2)
    cache.update([2], torch.tensor([[0.5, 1.5]]))
    state = cache.state_dict()
    assert isinstance(state["logits"], np.ndarray) and state["filled"].dtype == bool
    other = KnowledgeCache(3, 2)
    other.load_state_dict(state)
    assert other.filled.tolist() == [False, False, True]
    assert other.get([2]).tolist() == [[0.5, 1.5]]
    state["logits"][2] = 7.0  # the restored cache owns its memory
    assert other.get([2]).tolist() == [[0.5, 1.5]]


def test_invalid_inputs_raise() -> None:
    cache = KnowledgeCache(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cache.update([3], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="integers"):
        cache.get(np.array([0.5]))
    with pytest.raises(ValueError, match=r"\(n, C\)"):
        cache.update([0, 1], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        cache.update([0], torch.tensor([[float("nan"), 0.0]]))
    assert cache.num_filled == 0
    with pytest.raises(ValueError, match="expected"):
        cache.load_state_dict({"logits": np.zeros((2, 2), np.float32), "filled": np.zeros(2, bool)})
    with pytest.raises(ValueError, match="num_classes"):
        KnowledgeCache(3, 0)
