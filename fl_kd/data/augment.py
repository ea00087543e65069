"""Label-preserving augmentation of image batches: random shifts and mirror images.

A model trained for many epochs on 1,000 labelled images memorises them; showing each image shifted by a pixel or
two, or mirrored, every time it is seen is the cheapest regulariser there is. The server-alone baselines and the
server's distillation can both use it, so that a comparison between them never rests on a regulariser only one side
has. It runs on the batch, on the batch's device, from an explicit generator, so a seed gives the same views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_and_mirror(x: Tensor, shift: int, mirror: bool, generator: torch.Generator) -> Tensor:
    """``x`` ``(B, C, H, W)`` with each image moved by up to ``shift`` pixels each way (zero fill) and, with
    ``mirror``, flipped left-right with probability 1/2; the draws come from the CPU ``generator``.

    ``shift=0`` and ``mirror=False`` return ``x`` itself and draw nothing.
    """
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if not shift and not mirror:
        return x
    if x.dim() != 4:
        raise ValueError(f"shifts and mirror images need image batches (B, C, H, W), got shape {tuple(x.shape)}")
    batch, _, height, width = x.shape
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift))
        top = torch.randint(0, 2 * shift + 1, (batch,), generator=generator).to(x.device)
        left = torch.randint(0, 2 * shift + 1, (batch,), generator=generator).to(x.device)
        rows = (top[:, None] + torch.arange(height, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (left[:, None] + torch.arange(width, device=x.device))[:, None, :]  # (B, 1, W)
        samples = torch.arange(batch, device=x.device)[:, None, None]
        x = padded[samples, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    if mirror:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()
