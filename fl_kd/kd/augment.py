"""Label-preserving input augmentation for the server's training on the transfer set.

The server learns from a transfer set of a few thousand images, far fewer than the clients hold together; a fresh
random shift (and flip) of each image at each step lets it learn the teacher's knowledge rather than the pixels of
those few images. The teacher's logits stay those of the unshifted image, which a shift of two pixels does not
change the meaning of. Randomness comes from torch's global generator, which the server seeds per round
(:func:`fl_kd.kd.seeding.seeded_torch`), so the same seed gives the same views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "shift", "shift_flip")
"""``none``; ``shift``: a random translation of up to :data:`MAX_SHIFT` pixels each way, the image padded with
zeros (the background of the pixel scale in [0, 1]); ``shift_flip``: the same and a horizontal flip half the time
(for clothes and objects; not for digits or letters)."""

MAX_SHIFT = 2
"""Pixels a ``shift`` moves an image at most, along each axis (2 of 28 on Fashion-MNIST, as 4 of 32 on CIFAR)."""


def check_augmentation(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``name`` is known and fits inputs of ``input_shape`` (one sample, no batch axis)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if name != "none" and (len(input_shape) != 3 or min(input_shape[1:]) <= 2 * MAX_SHIFT):
        raise ValueError(
            f"augmentation {name!r} shifts images (channels, height, width) larger than {2 * MAX_SHIFT} pixels; "
            f"the inputs have shape {tuple(input_shape)}"
        )


def augment(x: Tensor, name: str) -> Tensor:
    """A random view of each image of the batch ``x`` ``(B, C, H, W)``; ``x`` itself for ``none``."""
    if name == "none" or x.shape[0] == 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT))
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (2, batch), device=x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
    samples = torch.arange(batch, device=x.device)[:, None, None]
    views = padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if name == "shift_flip":
        flip = torch.rand(batch, device=x.device) < 0.5
        views = torch.where(flip[:, None, None, None], views.flip(-1), views)
    return views.contiguous()
