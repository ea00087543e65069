"""Random views of transfer images for the server's training (:mod:`fl_kd.kd.augment`)."""

from __future__ import annotations

import pytest
import torch

from fl_kd.kd.augment import MAX_SHIFT, augment, check_augmentation


def _images(batch: int = 8, size: int = 12) -> torch.Tensor:
    """Images whose content stays clear of the border by ``MAX_SHIFT``, so a shift loses no pixel."""
    x = torch.zeros(batch, 2, size, size)
    inner = torch.rand(batch, 2, size - 2 * MAX_SHIFT, size - 2 * MAX_SHIFT) + 0.1
    x[:, :, MAX_SHIFT:-MAX_SHIFT, MAX_SHIFT:-MAX_SHIFT] = inner
    return x


def _is_shift_of(view: torch.Tensor, image: torch.Tensor, flip: bool = False) -> bool:
    source = image.flip(-1) if flip else image
    padded = torch.nn.functional.pad(source, (MAX_SHIFT,) * 4)
    size = image.shape[-1]
    return any(
        torch.equal(view, padded[:, dy : dy + size, dx : dx + size])
        for dy in range(2 * MAX_SHIFT + 1)
        for dx in range(2 * MAX_SHIFT + 1)
    )


def test_none_returns_the_batch_itself() -> None:
    x = _images()
    assert augment(x, "none") is x


def test_shift_moves_each_image_by_at_most_max_shift_and_keeps_its_pixels() -> None:
    torch.manual_seed(0)
    x = _images(batch=32)
    views = augment(x, "shift")
    assert views.shape == x.shape
    assert all(_is_shift_of(v, image) for v, image in zip(views, x, strict=True))
    assert torch.allclose(views.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # content inside the margin survives
    assert not torch.equal(views, x)  # 32 images, each left in place with probability 1/25


def test_shift_flip_flips_some_images_and_shifts_all() -> None:
    torch.manual_seed(1)
    x = _images(batch=64)
    views = augment(x, "shift_flip")
    flipped = [_is_shift_of(v, image, flip=True) for v, image in zip(views, x, strict=True)]
    assert all(f or _is_shift_of(v, image) for f, v, image in zip(flipped, views, x, strict=True))
    assert 10 < sum(flipped) < 54


def test_views_follow_the_global_seed() -> None:
    x = _images()
    torch.manual_seed(7)
    first = augment(x, "shift_flip")
    torch.manual_seed(7)
    assert torch.equal(augment(x, "shift_flip"), first)


def test_check_augmentation_refuses_unknown_names_and_non_images() -> None:
    check_augmentation("shift", (1, 28, 28))
    check_augmentation("none", (30,))
    with pytest.raises(ValueError, match="unknown augmentation"):
        check_augmentation("rotate", (1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        check_augmentation("shift", (30,))
    with pytest.raises(ValueError, match="shape"):
        check_augmentation("shift_flip", (1, 4, 4))
