"""Vertical partitioning: which feature columns each party holds, and which samples all parties share.

In vertical FL every party holds different columns of the *same* samples. ``VerticalSplit`` fixes the columns
per party; ``align_samples`` finds the shared samples by id. In deployments the id intersection is computed by
private set intersection (PSI); here a plain sorted intersection stands in for it, since the protocol only
changes who learns the intersection, not the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fl_kd.config import ConfigError
from fl_kd.registry import Registry

SplitScheme = str | Sequence[Sequence[int]]


@dataclass(frozen=True)
class VerticalSplit:
    """Flat feature indices held by each party.

    Attributes
    ----------
    columns : tuple[np.ndarray, ...]
        One int64 array per party of indices into the flattened features ``x.reshape(N, -1)``; disjoint and
        sorted.
    num_features : int
        Number of flattened features of one sample.
    """

    columns: tuple[np.ndarray, ...]
    num_features: int

    @property
    def num_parties(self) -> int:
        """Number of parties the features are split across."""
        return len(self.columns)

    @property
    def party_sizes(self) -> list[int]:
        """Number of features each party holds."""
        return [len(c) for c in self.columns]

    def apply(self, x: Tensor) -> list[Tensor]:
        """Cut ``x`` of shape ``(N, *input_shape)`` into one ``(N, F_k)`` tensor per party."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.num_features:
            raise ValueError(f"the split was made for {self.num_features} features per sample, got {flat.shape[1]}")
        return [flat[:, torch.from_numpy(cols)] for cols in self.columns]


def _halves(shape: tuple[int, ...], num_parties: int) -> VerticalSplit:
    return _blocks(shape, 2)


def _blocks(shape: tuple[int, ...], num_parties: int) -> VerticalSplit:
    if len(shape) == 3:
        return _image_stripes(shape, num_parties)
    if len(shape) != 1:
        raise ValueError(f"input_shape must be (F,) or (C, H, W), got {shape}")
    num_features = shape[0]
    if not 1 <= num_parties <= num_features:
        raise ConfigError(
            f"vfl_split.num_parties={num_parties}: cannot split {num_features} features across that many parties"
        )
    blocks = np.array_split(np.arange(num_features, dtype=np.int64), num_parties)
    return VerticalSplit(tuple(blocks), num_features)


#: Named column split schemes (``vfl_split.scheme``): ``halves`` always gives two parties (for images the left
#: and right halves of every row, as in the usual 2-party MNIST split); ``blocks`` gives ``num_parties``
#: contiguous blocks of nearly equal size (for images: vertical stripes of whole pixel columns).
SPLIT_SCHEMES: Registry[Callable[[tuple[int, ...], int], VerticalSplit]] = Registry("split scheme")
SPLIT_SCHEMES.add("halves", _halves)
SPLIT_SCHEMES.add("blocks", _blocks)

#: Schemes that fix the number of parties themselves.
FIXED_PARTIES = {"halves": 2}


def available_split_schemes() -> tuple[str, ...]:
    """Names accepted as ``scheme`` by :func:`make_split`."""
    return SPLIT_SCHEMES.names()


def make_split(input_shape: Sequence[int], scheme: SplitScheme = "halves", num_parties: int = 2) -> VerticalSplit:
    """Build the per-party columns for samples of ``input_shape``.

    Parameters
    ----------
    input_shape : Sequence[int]
        Shape of one sample: ``(F,)`` for tabular data, ``(C, H, W)`` for images.
    scheme : str or Sequence[Sequence[int]] (default: "halves")
        A name of :data:`SPLIT_SCHEMES`, or explicit flat index lists, one per party (disjoint, in range,
        non-empty).
    num_parties : int (default: 2)
        Number of parties for ``"blocks"``; ignored otherwise.
    """
    shape = tuple(int(s) for s in input_shape)
    if not isinstance(scheme, str):
        return _explicit_split(scheme, int(np.prod(shape)))
    return SPLIT_SCHEMES.get(scheme)(shape, num_parties)


def split_features(x: Tensor, scheme: SplitScheme = "halves", num_parties: int = 2) -> list[Tensor]:
    """Cut ``x`` of shape ``(N, *input_shape)`` into per-party feature matrices ``(N, F_k)``."""
    return make_split(tuple(x.shape[1:]), scheme, num_parties).apply(x)


def _image_stripes(shape: tuple[int, ...], num_parties: int) -> VerticalSplit:
    channels, height, width = shape
    if not 1 <= num_parties <= width:
        raise ConfigError(
            f"vfl_split.num_parties={num_parties}: cannot split an image of width {width} into that many stripes"
        )
    flat = np.arange(channels * height * width, dtype=np.int64).reshape(channels, height, width)
    stripes = np.array_split(np.arange(width), num_parties)
    return VerticalSplit(tuple(np.sort(flat[:, :, s].reshape(-1)) for s in stripes), channels * height * width)


def _explicit_split(scheme: Sequence[Sequence[int]], num_features: int) -> VerticalSplit:
    columns = tuple(np.asarray(list(c), dtype=np.int64) for c in scheme)
    if len(columns) == 0:
        raise ConfigError("vfl_split.scheme: an explicit split needs at least one party")
    for party, cols in enumerate(columns):
        if cols.size == 0:
            raise ConfigError(f"vfl_split.scheme: party {party} holds no features")
        if cols.min() < 0 or cols.max() >= num_features:
            raise ConfigError(f"vfl_split.scheme: party {party} has feature indices outside [0, {num_features})")
    merged = np.concatenate(columns)
    if np.unique(merged).size != merged.size:
        raise ConfigError("vfl_split.scheme: explicit feature index lists must be disjoint (a feature has one party)")
    return VerticalSplit(tuple(np.sort(c) for c in columns), num_features)


def align_samples(party_ids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Positions, in each party's own data, of the samples every party holds.

    Parameters
    ----------
    party_ids : Sequence[np.ndarray]
        Sample ids held by each party, shape ``(N_k,)``, in the party's own row order; ids must be unique per
        party.

    Returns
    -------
    list[np.ndarray]
        For each party, int64 positions ``(M,)`` such that ``party_ids[k][positions[k]]`` is the sorted
        intersection of all ids. Row ``i`` of every party then refers to the same sample, which is what split
        training needs.
    """
    if len(party_ids) == 0:
        raise ValueError("align_samples needs the ids of at least one party")
    arrays = [np.asarray(ids).reshape(-1) for ids in party_ids]
    for party, ids in enumerate(arrays):
        if np.unique(ids).size != ids.size:
            raise ValueError(f"party {party} holds duplicate sample ids")
    shared = arrays[0]
    for ids in arrays[1:]:
        shared = np.intersect1d(shared, ids)
    shared = np.unique(shared)
    if shared.size == 0:
        raise ValueError("the parties share no sample ids; vertical training needs a common set of samples")
    positions = []
    for ids in arrays:
        order = np.argsort(ids, kind="stable")
        positions.append(order[np.searchsorted(ids[order], shared)].astype(np.int64))
    return positions
