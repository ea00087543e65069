"""Node-local data: a deployed client loads its own data only, and trains exactly as in simulation.

:mod:`fl_kd.data.node_local` parses the node config and reads a node's data folder; :mod:`fl_kd.kd.node_federation`
builds the client's view (transfer set + test set + its own data). Both are Flower-free, so they are tested directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fl_kd.data.node_local import NodeConfigError, load_node_data, node_spec, write_node_data
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.federation import build_federation
from fl_kd.kd.node_federation import node_federation
from fl_kd.kd.roles import Instruction
from tests.kd_configs import tiny_config


# -- node config -----------------------------------------------------------------------------------------------------
def test_a_simulated_node_names_no_data() -> None:
    spec = node_spec({"partition-id": 2, "num-partitions": 4})
    assert spec.client_id == 2 and not spec.node_local


def test_a_deployed_node_names_its_data_tier_and_id(tmp_path: Path) -> None:
    spec = node_spec({"partition-id": 1, "data-dir": str(tmp_path), "device-tier": "low"})
    assert (spec.client_id, spec.data_dir, spec.device_tier, spec.node_local) == (1, tmp_path, "low", True)


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": 2}, "no partition-id"),
        ({"partition-id": "0"}, "partition-id must be an int"),
        ({"partition-id": True}, "partition-id must be an int"),
        ({"partition-id": -1}, "must be >= 0"),
        ({"partition-id": 0, "data-dir": 3}, "data-dir must be a non-empty string"),
        ({"partition-id": 0, "data-dir": "/a", "dataset": "digits"}, "both data-dir and dataset"),
        ({"partition-id": 0, "data_dir": "/a"}, "unknown node config key"),
        ({"partition-id": 0, "num-partitions": 0}, "num-partitions must be >= 1"),
        ({"partition-id": 5, "num-partitions": 4}, "partition-id=5 is not one of num-partitions=4"),
    ],
)
def test_a_bad_node_config_is_one_clear_error(node_config: dict[str, object], message: str) -> None:
    with pytest.raises(NodeConfigError, match=message):
        node_spec(node_config)


def test_a_node_that_does_not_fit_the_experiment_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config()
    with pytest.raises(NodeConfigError, match=r"partition-id=4 is not in \[0, 4\)"):
        node_federation(cfg, node_spec({"partition-id": 4, "dataset": "digits"}))
    with pytest.raises(NodeConfigError, match="num-partitions=3 but the experiment has 4"):
        node_federation(cfg, node_spec({"partition-id": 0, "num-partitions": 3, "dataset": "digits"}))
    with pytest.raises(NodeConfigError, match="public dataset is 'digits'"):
        node_federation(cfg, node_spec({"partition-id": 0, "dataset": "mnist"}))
    with pytest.raises(NodeConfigError, match="has no tier 'jetson'"):
        node_federation(cfg, node_spec({"partition-id": 0, "dataset": "digits", "device-tier": "jetson"}))


# -- data folder -----------------------------------------------------------------------------------------------------
def test_data_folder_round_trip(tmp_path: Path) -> None:
    x, y = np.random.default_rng(0).random((5, 1, 8, 8)), np.array([0, 1, 2, 1, 0])
    write_node_data(tmp_path, x, y)
    data = load_node_data(tmp_path, (1, 8, 8), 3)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert torch.equal(data.y_train, torch.from_numpy(y)) and data.x_test is None
    assert not list(tmp_path.glob(".*.tmp"))


def _folder(tmp_path: Path, **arrays: Any) -> Path:
    base = {"x_train": np.zeros((3, 1, 8, 8), np.float32), "y_train": np.array([0, 1, 2])}
    for name, array in (base | arrays).items():
        if array is not None:
            np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
    return tmp_path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": None}, "x_train.npy is missing"),
        ({"x_train": np.array([{"a": 1}], dtype=object)}, "not a plain .npy array"),
        ({"x_train": np.zeros((3, 8, 8), np.float32)}, "the models expect"),
        ({"x_train": np.full((3, 1, 8, 8), np.nan, np.float32)}, "NaN or inf"),
        ({"x_train": np.zeros((3, 1, 8, 8), np.int64)}, "inputs must be floats"),
        ({"y_train": np.array([0.0, 1.0, 2.0])}, "1-D integer array"),
        ({"y_train": np.array([0, 1])}, "2 labels for 3 examples"),
        ({"y_train": np.array([0, 1, 10])}, r"labels must lie in \[0, 10\)"),
        ({"x_test": np.zeros((2, 1, 8, 8), np.float32)}, "give both x_test.npy and y_test.npy"),
        ({"x_train": np.full((3, 1, 8, 8), 1e300)}, "beyond float32's range"),  # float64, finite before the cast
        ({"x_test": np.zeros((0, 1, 8, 8), np.float32), "y_test": np.zeros(0, np.int64)}, "x_test.npy holds no"),
    ],
)
def test_an_unusable_data_folder_names_the_file(tmp_path: Path, arrays: dict[str, object], message: str) -> None:
    with pytest.raises(NodeConfigError, match=message):
        load_node_data(_folder(tmp_path, **arrays), (1, 8, 8), 10)


def test_an_archive_or_an_oversized_header_is_named_not_a_bare_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    np.savez(folder / "archive.npz", x=np.zeros(3))
    (folder / "archive.npz").replace(folder / "x_train.npy")  # an .npz under the .npy name
    with pytest.raises(NodeConfigError, match=r"x_train.npy is not a plain .npy array \(an .npz archive\)"):
        load_node_data(folder)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }"
    header += b" " * (118 - len(header)) + b"\n"
    (folder / "x_train.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(NodeConfigError, match="x_train.npy"):
        load_node_data(folder)


def test_a_state_dir_with_a_tilde_is_the_home_folder() -> None:
    spec = node_spec({"partition-id": 0, "state-dir": "~/fl-kd-state"})
    assert spec.state_dir is not None and "~" not in str(spec.state_dir)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="does not exist"):
        load_node_data(tmp_path / "nowhere")


# -- the client's view -----------------------------------------------------------------------------------------------
def test_a_node_holds_the_transfer_set_and_its_own_data_only() -> None:
    cfg = tiny_config()
    full = build_federation(cfg)
    view = node_federation(cfg, node_spec({"partition-id": 2, "dataset": "digits"}))
    own_x, own_y = full.client_data(2)
    assert len(view.data.y_train) == full.num_labelled + len(own_y)  # nothing of the other clients
    assert [idx.size for idx in view.client_idx] == [0, 0, own_y.numel(), 0]
    assert torch.equal(view.client_data(2)[0], own_x) and torch.equal(view.client_data(2)[1], own_y)
    assert torch.equal(view.transfer_x, full.transfer_x) and torch.equal(view.transfer_y, full.transfer_y)
    assert torch.equal(view.public_x, full.public_x)
    assert all(torch.equal(a, b) for a, b in zip(view.personalised_test(2), full.personalised_test(2), strict=True))
    assert view.tiers[2] == full.tiers[2]


def test_the_unlabelled_transfer_part_reaches_the_node_too() -> None:
    cfg = tiny_config(transfer={"labelled": 60, "unlabelled": 30})
    full = build_federation(cfg)
    view = node_federation(cfg, node_spec({"partition-id": 0, "dataset": "digits"}))
    assert torch.equal(view.public_x, full.public_x) and view.num_labelled == full.num_labelled


def test_the_node_config_picks_the_device_tier() -> None:
    cfg = tiny_config()
    default = build_federation(cfg).tiers[1].name
    other = next(tier.name for tier in cfg.device_profile.tiers if tier.name != default)
    view = node_federation(cfg, node_spec({"partition-id": 1, "dataset": "digits", "device-tier": other}))
    assert view.tiers[1].name == other


def test_a_client_on_its_data_folder_trains_as_the_simulated_one(tmp_path: Path) -> None:
    """The same partition written to a folder gives bit-identical logits after local training."""
    cfg = tiny_config()
    full = build_federation(cfg)
    x, y = full.client_data(3)
    write_node_data(tmp_path / "node3", x.numpy(), y.numpy())
    view = node_federation(cfg, node_spec({"partition-id": 3, "data-dir": str(tmp_path / "node3")}))
    algorithm = get_algorithm(cfg.strategy.name)
    positions = np.arange(10, dtype=np.int64)
    answers = [
        algorithm.build_client(cfg, federation, 3).train(1, Instruction({"positions": positions}))
        for federation in (full, view)
    ]
    assert np.array_equal(answers[0].arrays["logits"], answers[1].arrays["logits"])
    assert answers[0].metrics == answers[1].metrics


def test_a_node_with_its_own_test_set_is_scored_on_it(tmp_path: Path) -> None:
    cfg = tiny_config()
    x_test, y_test = np.zeros((7, 1, 8, 8), np.float32), np.arange(7)
    write_node_data(tmp_path, np.zeros((5, 1, 8, 8)), np.arange(5), x_test, y_test)
    view = node_federation(cfg, node_spec({"partition-id": 0, "data-dir": str(tmp_path)}))
    assert torch.equal(view.data.y_test, torch.arange(7)) and torch.equal(
        view.personalised_test(0)[1], view.data.y_test
    )
