"""Partitioners (property tests) and the partition report (hand-computed values)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fl_kd.data import load_dataset
from fl_kd.partition import (
    PartitionReport,
    dirichlet_partition,
    iid_partition,
    partition,
    pathological_partition,
    quantity_skew_partition,
)

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None)
label_lists = st.lists(st.integers(0, 5), min_size=1, max_size=150)


def _check_partition(labels: np.ndarray, parts: list[np.ndarray], num_clients: int, min_size: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64 and len(part) >= min_size
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates
    merged = np.concatenate(parts)
    assert len(merged) == len(labels)  # together with the union check: disjoint
    np.testing.assert_array_equal(np.sort(merged), np.arange(len(labels)))


def _same(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@PROPERTY_SETTINGS
@given(labels=label_lists, data=st.data(), seed=st.integers(0, 2**16))
def test_iid_properties(labels: list[int], data: st.DataObject, seed: int) -> None:
    array = np.array(labels)
    num_clients = data.draw(st.integers(1, len(array)))
    min_size = data.draw(st.integers(0, len(array) // num_clients))
    parts = iid_partition(array, num_clients, seed, min_size)
    _check_partition(array, parts, num_clients, min_size)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _same(parts, iid_partition(array, num_clients, seed, min_size))


@PROPERTY_SETTINGS
@given(
    labels=label_lists,
    data=st.data(),
    alpha=st.floats(0.05, 100),
    seed=st.integers(0, 2**16),
)
def test_dirichlet_properties(labels: list[int], data: st.DataObject, alpha: float, seed: int) -> None:
    array = np.array(labels)
    num_clients = data.draw(st.integers(1, min(8, len(array))))
    min_size = data.draw(st.integers(0, min(3, len(array) // num_clients)))
    try:
        parts = dirichlet_partition(array, num_clients, alpha, seed, min_size, max_retries=200)
    except ValueError as error:
        # A legitimate outcome for tiny alpha: no draw met min_size. It must say so.
        assert "min_size" in str(error) and "draws" in str(error)
        assume(False)
    _check_partition(array, parts, num_clients, min_size)
    assert _same(parts, dirichlet_partition(array, num_clients, alpha, seed, min_size, max_retries=200))


@PROPERTY_SETTINGS
@given(labels=label_lists, data=st.data(), seed=st.integers(0, 2**16))
def test_pathological_properties(labels: list[int], data: st.DataObject, seed: int) -> None:
    array = np.array(labels)
    num_classes = len(np.unique(array))
    classes_per_client = data.draw(st.integers(1, num_classes))
    lowest = -(-num_classes // classes_per_client)  # ceil: enough clients to cover every class
    assume(lowest <= len(array))
    num_clients = data.draw(st.integers(lowest, min(len(array), lowest + 6)))
    min_size = data.draw(st.integers(0, 1))
    try:
        parts = pathological_partition(array, num_clients, classes_per_client, seed, min_size)
    except ValueError as error:
        assert "min_size" in str(error)  # a class too small to give every holder an example
        assume(False)
    _check_partition(array, parts, num_clients, min_size)
    for part in parts:
        assert len(np.unique(array[part])) <= classes_per_client
    assert _same(parts, pathological_partition(array, num_clients, classes_per_client, seed, min_size))


@PROPERTY_SETTINGS
@given(labels=label_lists, data=st.data(), alpha=st.floats(0.01, 100), seed=st.integers(0, 2**16))
def test_quantity_skew_properties(labels: list[int], data: st.DataObject, alpha: float, seed: int) -> None:
    array = np.array(labels)
    num_clients = data.draw(st.integers(1, len(array)))
    min_size = data.draw(st.integers(0, len(array) // num_clients))
    parts = quantity_skew_partition(array, num_clients, alpha, seed, min_size)
    _check_partition(array, parts, num_clients, min_size)
    assert _same(parts, quantity_skew_partition(array, num_clients, alpha, seed, min_size))


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_dataset("digits").y_train.numpy()


def test_lower_alpha_gives_higher_label_skew(digits_labels: np.ndarray) -> None:
    def mean_skew(alpha: float) -> float:
        return float(
            np.mean(
                [
                    PartitionReport.from_partition(
                        digits_labels, dirichlet_partition(digits_labels, 10, alpha, seed), 10
                    ).label_skew
                    for seed in range(5)
                ]
            )
        )

    low, high = mean_skew(0.1), mean_skew(100.0)
    assert high < 0.1 < 0.4 < low


def test_pathological_skew_and_iid_skew(digits_labels: np.ndarray) -> None:
    # One class per client: each client's TV to the near-uniform global distribution is 1 - p(c) ~ 0.9.
    one_class = PartitionReport.from_partition(digits_labels, pathological_partition(digits_labels, 10, 1, seed=0), 10)
    assert np.all((one_class.counts > 0).sum(axis=1) == 1)
    assert abs(one_class.label_skew - 0.9) < 0.01
    iid = PartitionReport.from_partition(digits_labels, iid_partition(digits_labels, 10, seed=0), 10)
    assert iid.label_skew < 0.15


def test_lower_alpha_gives_more_unequal_sizes(digits_labels: np.ndarray) -> None:
    def size_spread(alpha: float) -> float:
        return float(
            np.mean([np.std([len(p) for p in quantity_skew_partition(digits_labels, 10, alpha, s)]) for s in range(5)])
        )

    assert size_spread(0.1) > 3 * size_spread(100.0)


def test_dispatch_matches_direct_calls(digits_labels: np.ndarray) -> None:
    cases: list[tuple[str, dict[str, Any], list[np.ndarray]]] = [
        ("iid", {}, iid_partition(digits_labels, 5, 1)),
        ("dirichlet", {"alpha": 0.5}, dirichlet_partition(digits_labels, 5, 0.5, 1)),
        ("pathological", {"classes_per_client": 2}, pathological_partition(digits_labels, 5, 2, 1)),
        ("quantity_skew", {"alpha": 0.5}, quantity_skew_partition(digits_labels, 5, 0.5, 1)),
    ]
    for name, params, expected in cases:
        assert _same(partition(digits_labels, name, num_clients=5, seed=1, **params), expected)


LABELS = np.repeat(np.arange(4), 5)  # 20 samples, 4 classes
ONE_CLASS = np.zeros(20, dtype=np.int64)
SMALL_CLASSES = np.array([0] * 17 + [1, 2, 3])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iid_partition(LABELS, 0, 0), "num_clients must be an integer >= 1"),
        (lambda: iid_partition(LABELS, 21, 0, min_size=0), "more clients than samples"),
        (lambda: iid_partition(LABELS, 5, 0, min_size=5), "exceeds the 20 available"),
        (lambda: iid_partition(LABELS, 2, 0, min_size=-1), "min_size must be a non-negative"),
        (lambda: iid_partition(LABELS.reshape(4, 5), 2, 0), "one-dimensional"),
        (lambda: dirichlet_partition(LABELS, 2, 0.0, 0), "alpha must be a positive"),
        (lambda: dirichlet_partition(LABELS, 2, -1.0, 0), "alpha must be a positive"),
        (lambda: dirichlet_partition(LABELS, 2, float("nan"), 0), "alpha must be a positive"),
        (lambda: dirichlet_partition(LABELS, 2, 1.0, 0, max_retries=0), "max_retries"),
        # A single class always lands on one client, so min_size=5 for all 4 can never hold.
        (lambda: dirichlet_partition(ONE_CLASS, 4, 1e-3, 0, min_size=5, max_retries=5), "after 5 draws"),
        (lambda: quantity_skew_partition(LABELS, 2, 0.0, 0), "alpha must be a positive"),
        (lambda: quantity_skew_partition(LABELS, 2, float("inf"), 0), "alpha must be a positive"),
        (lambda: pathological_partition(LABELS, 4, 0, 0), r"classes_per_client must be .* \[1, 4\]"),
        (lambda: pathological_partition(LABELS, 4, 5, 0), r"classes_per_client must be .* \[1, 4\]"),
        (lambda: pathological_partition(LABELS, 3, 1, 0), "cannot cover all 4 classes"),
        # 6 clients x 1 class over 4 classes: some class among 1..3 (one example each) gets two holders.
        (lambda: pathological_partition(SMALL_CLASSES, 6, 1, 0, min_size=1), "min_size"),
        (lambda: partition(LABELS, "shards", 2, 0), "Unknown partitioner 'shards'.*dirichlet"),
        (lambda: partition(LABELS, "dirichlet", 2, 0), "needs parameter.*alpha"),
        (lambda: partition(LABELS, "iid", 2, 0, alpha=1.0), "unexpected parameter.*alpha"),
    ],
)
def test_bad_requests_raise_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_report_by_hand(tmp_path: Path) -> None:
    labels = np.array([0, 0, 1, 1])
    skewed = PartitionReport.from_partition(labels, [np.array([0, 1]), np.array([2, 3])], num_classes=2)
    assert skewed.counts.tolist() == [[2, 0], [0, 2]] and skewed.sizes.tolist() == [2, 2]
    np.testing.assert_allclose(skewed.tv, [0.5, 0.5])  # 0.5 * (|1 - .5| + |0 - .5|)
    assert skewed.label_skew == pytest.approx(0.5)
    balanced = PartitionReport.from_partition(labels, [np.array([0, 2]), np.array([1, 3])], num_classes=2)
    assert balanced.label_skew == 0.0

    three_classes = PartitionReport.from_partition(labels, [np.array([0, 1, 2]), np.array([3])], num_classes=3)
    # client 0: (2/3, 1/3, 0) vs global (1/2, 1/2, 0) -> TV 1/6; client 1: (0, 1, 0) -> TV 1/2.
    np.testing.assert_allclose(three_classes.tv, [1 / 6, 1 / 2])
    assert three_classes.label_skew == pytest.approx(1 / 3)

    text = three_classes.to_text()
    assert text.splitlines()[0].split() == ["client", "size", "c0", "c1", "c2", "tv"]
    assert text.splitlines()[1].split() == ["0", "3", "2", "1", "0", "0.167"]
    assert "label skew (mean TV to global): 0.3333" in text
    assert three_classes.to_markdown().startswith("| client | size | c0 | c1 | c2 | tv |")

    path = tmp_path / "out" / "partition.json"
    three_classes.save(path)
    saved = json.loads(path.read_text())
    assert saved["counts"] == [[2, 1, 0], [0, 1, 0]] and saved["sizes"] == [3, 1]
    assert saved["label_skew"] == pytest.approx(1 / 3) and saved["tv"] == pytest.approx([1 / 6, 1 / 2])


def test_report_empty_client_and_bad_labels() -> None:
    labels = np.array([0, 1])
    report = PartitionReport.from_partition(labels, [np.array([0, 1]), np.array([], dtype=np.int64)], 2)
    assert report.sizes.tolist() == [2, 0] and np.isnan(report.tv[1]) and report.label_skew == 0.0
    assert report.to_dict()["tv"] == [0.0, None]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        PartitionReport.from_partition(np.array([0, 2]), [np.array([0, 1])], 2)
    with pytest.raises(ValueError, match="indexes outside"):
        PartitionReport.from_partition(labels, [np.array([0, 5])], 2)
