"""Transfer-set split and personalised test subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_kd.data import DatasetError, personalised_test_indices, split_transfer_set
from fl_kd.data.labels import allocate_proportionally

# 10, 20, 30 and 40 examples of classes 0..3.
LABELS = np.repeat(np.arange(4), [10, 20, 30, 40])


def _check_split(labels: np.ndarray, transfer: np.ndarray, private: np.ndarray, size: int) -> None:
    assert transfer.dtype == np.int64 and private.dtype == np.int64
    assert len(transfer) == size
    assert np.all(np.diff(transfer) > 0) and np.all(np.diff(private) > 0)
    assert np.intersect1d(transfer, private).size == 0
    np.testing.assert_array_equal(np.union1d(transfer, private), np.arange(len(labels)))


def test_stratified_transfer_set_keeps_class_shares() -> None:
    transfer, private = split_transfer_set(LABELS, size=10, seed=0)
    _check_split(LABELS, transfer, private, 10)
    assert np.bincount(LABELS[transfer]).tolist() == [1, 2, 3, 4]


def test_largest_remainder_rounding_by_hand() -> None:
    # 4 split over three equal classes: 4/3 each -> floors 1,1,1, the one left goes to class 0.
    assert allocate_proportionally(4, np.array([5, 5, 5])).tolist() == [2, 1, 1]
    # 7 over weights 1:2:4 is exact.
    assert allocate_proportionally(7, np.array([1, 2, 4])).tolist() == [1, 2, 4]
    # 5 over 3:3:1 -> 15/7, 15/7, 5/7 -> floors 2,2,0, remainder 1 to the largest fraction (class 2).
    assert allocate_proportionally(5, np.array([3, 3, 1])).tolist() == [2, 2, 1]


def test_transfer_set_is_deterministic_in_seed() -> None:
    first = split_transfer_set(LABELS, size=20, seed=3)
    again = split_transfer_set(torch.as_tensor(LABELS), size=20, seed=3)
    other = split_transfer_set(LABELS, size=20, seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_unstratified_transfer_set() -> None:
    transfer, private = split_transfer_set(LABELS, size=33, seed=1, stratified=False)
    _check_split(LABELS, transfer, private, 33)


@pytest.mark.parametrize("stratified", [True, False])
def test_empty_and_full_transfer_sets(stratified: bool) -> None:
    transfer, private = split_transfer_set(LABELS, size=0, seed=0, stratified=stratified)
    assert transfer.size == 0 and transfer.dtype == np.int64
    np.testing.assert_array_equal(private, np.arange(100))
    transfer, private = split_transfer_set(LABELS, size=100, seed=0, stratified=stratified)
    np.testing.assert_array_equal(transfer, np.arange(100))
    assert private.size == 0


@pytest.mark.parametrize(
    ("labels", "size", "message"),
    [
        (LABELS, -1, r"in \[0, 100\]"),
        (LABELS, 101, r"in \[0, 100\]"),
        (LABELS, 2.5, "integer"),
        (LABELS.reshape(10, 10), 5, "one-dimensional"),
        (LABELS.astype(float), 5, "integer class indices"),
        (LABELS - 1, 5, "non-negative"),
    ],
)
def test_bad_transfer_requests(labels: np.ndarray, size: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_transfer_set(labels, size=size, seed=0)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=120),
    fraction=st.floats(0, 1),
    seed=st.integers(0, 2**16),
    stratified=st.booleans(),
)
def test_transfer_split_properties(labels: list[int], fraction: float, seed: int, stratified: bool) -> None:
    array = np.array(labels)
    size = int(round(fraction * len(array)))
    transfer, private = split_transfer_set(array, size=size, seed=seed, stratified=stratified)
    _check_split(array, transfer, private, size)
    if stratified:
        # Each class gets its proportional share, rounded down or up.
        counts = np.bincount(array, minlength=6)
        taken = np.bincount(array[transfer], minlength=6)
        assert np.all(np.abs(taken - size * counts / len(array)) < 1)


def test_personalised_indices_follow_client_proportions() -> None:
    test_labels = np.repeat(np.arange(3), 50)
    indices = personalised_test_indices(test_labels, np.array([6, 3, 0]), size=30, seed=0)
    assert indices.dtype == np.int64 and len(indices) == 30
    assert np.bincount(test_labels[indices], minlength=3).tolist() == [20, 10, 0]
    assert len(np.unique(indices)) == 30  # enough examples per class: no repeats
    np.testing.assert_array_equal(indices, personalised_test_indices(test_labels, np.array([6, 3, 0]), size=30, seed=0))


def test_personalised_indices_repeat_only_when_a_class_runs_out() -> None:
    test_labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    indices = personalised_test_indices(test_labels, np.array([1, 1]), size=10, seed=0)
    class0 = indices[test_labels[indices] == 0]
    class1 = indices[test_labels[indices] == 1]
    assert len(class0) == 5 and set(class0.tolist()) == {0, 1, 2}  # all 3 used, then 2 repeats
    assert len(class1) == 5 and len(set(class1.tolist())) == 5  # 7 available: no repeats
    assert len(personalised_test_indices(test_labels, np.array([1, 1]), size=100, seed=0)) == 100  # 10x: the most


@pytest.mark.parametrize(
    ("test_labels", "counts", "size", "message"),
    [
        (np.array([0, 0, 1]), np.array([1, 0, 1]), 3, "the test split has no example of class 2, which a client"),
        (np.array([0, 1]), np.array([-1, 2]), 2, "non-negative"),
        (np.array([0, 1]), np.array([0, 0]), 2, "positive sum"),
        (np.array([0, 1]), np.array([[1, 1]]), 2, r"shape \(C,\)"),
        (np.array([0, 3]), np.array([1, 1]), 2, "outside the 2 classes"),
        (np.array([0, 1]), np.array([1, 1]), -1, "non-negative integer"),
        (np.array([0, 1]), np.array([1, 1]), 21, "more than 10x"),
    ],
)
def test_bad_personalised_requests(test_labels: np.ndarray, counts: np.ndarray, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        personalised_test_indices(test_labels, counts, size=size, seed=0)
    # The data's fault is a DatasetError, which the command line shows in one line instead of a traceback.
    assert isinstance(raised.value, DatasetError) == ("test split" in message)
