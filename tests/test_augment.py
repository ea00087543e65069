"""Shifts and mirror images (``fl_kd.data.augment``) and the server settings that train on them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.data import DatasetSplits, load_dataset
from fl_kd.data.augment import shift_and_mirror
from fl_kd.kd.baselines import run_pseudo_label_server, run_transfer_only_server
from fl_kd.kd.fedgems import FedGEMSConfig, SelectiveDistillServer, ServerDistillConfig
from fl_kd.models import build_model
from tests.kd_configs import tiny_config


def _dots(batch: int, size: int = 9) -> torch.Tensor:
    """``(batch, 1, size, size)`` images with one lit pixel each, at the centre."""
    x = torch.zeros(batch, 1, size, size)
    x[:, 0, size // 2, size // 2] = 1.0
    return x


def test_nothing_asked_returns_the_batch_itself_and_draws_nothing() -> None:
    x, generator = _dots(4), torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert shift_and_mirror(x, 0, False, generator) is x
    assert torch.equal(generator.get_state(), state)


def test_a_shift_moves_each_image_by_at_most_shift_pixels_and_keeps_it_whole() -> None:
    views = shift_and_mirror(_dots(200), 2, False, torch.Generator().manual_seed(1))
    assert views.shape == (200, 1, 9, 9)
    assert torch.equal(views.sum(dim=(1, 2, 3)), torch.ones(200))  # the lit pixel stays inside the frame
    rows, cols = torch.nonzero(views[:, 0], as_tuple=True)[1:]
    moves = {(int(r) - 4, int(c) - 4) for r, c in zip(rows, cols, strict=True)}
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # all 25 offsets, none further


def test_a_mirror_flips_about_half_the_images_left_right() -> None:
    x = torch.zeros(400, 1, 4, 4)
    x[:, 0, 1, 0] = 1.0
    views = shift_and_mirror(x, 0, True, torch.Generator().manual_seed(2))
    flipped = views[:, 0, 1, 3] == 1.0
    assert torch.equal(flipped | (views[:, 0, 1, 0] == 1.0), torch.ones(400, dtype=torch.bool))
    assert 150 < int(flipped.sum()) < 250


def test_the_same_seed_gives_the_same_views() -> None:
    x = torch.rand(16, 3, 8, 8)
    first = shift_and_mirror(x, 1, True, torch.Generator().manual_seed(5))
    assert torch.equal(first, shift_and_mirror(x, 1, True, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, shift_and_mirror(x, 1, True, torch.Generator().manual_seed(6)))


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="shift"):
        shift_and_mirror(_dots(2), -1, False, torch.Generator())
    with pytest.raises(ValueError, match="image batches"):
        shift_and_mirror(torch.rand(2, 30), 2, False, torch.Generator())
    with pytest.raises(ConfigError, match="augment_shift"):
        ServerDistillConfig(augment_shift=-1)
    with pytest.raises(ConfigError, match="strategy.server_augment_shift"):
        FedGEMSConfig(server_augment_shift=-2)
    # A tabular server cannot be shifted: refused when it is built, before any round.
    config = ServerDistillConfig(augment_mirror=True)
    with pytest.raises(ValueError, match="image inputs"):
        SelectiveDistillServer(build_model("mlp_small", (30,), 2, seed=0), torch.rand(10, 30), torch.zeros(10), config)


def test_the_strategy_passes_its_augmentation_to_the_server() -> None:
    server = FedGEMSConfig(server_augment_shift=2, server_augment_mirror=True).server_config()
    assert (server.augment_shift, server.augment_mirror) == (2, True)
    assert (FedGEMSConfig().server_config().augment_shift, FedGEMSConfig().server_config().augment_mirror) == (0, False)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.mark.parametrize("run", [run_transfer_only_server, run_pseudo_label_server])
def test_the_server_alone_trains_on_the_views_deterministically(digits: DatasetSplits, run: Any) -> None:
    def rows(**augment: Any) -> list[dict[str, Any]]:
        transfer = {"labelled": 60, "unlabelled": 80}
        cfg = tiny_config(rounds=2, transfer=transfer, unlabelled_per_round=50, **augment)
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in run(cfg, digits)]

    plain, shifted = rows(), rows(server_augment_shift=1, server_augment_mirror=True)
    assert plain[0]["server_loss"] != shifted[0]["server_loss"]  # it trains on other images
    assert rows(server_augment_shift=1, server_augment_mirror=True) == shifted
