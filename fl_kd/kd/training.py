"""Small training utilities shared by the distillation server and clients.

They exist so that both sides shuffle, batch, predict and validate in exactly the same way; a Flower client
and the reference runner then reach identical numbers because they run the same few lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, DTypeLike, NDArray
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fl_kd.config import ConfigError


def minibatches(num_samples: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled index batches ``(b,)`` covering ``range(num_samples)`` once.

    A trailing batch of one sample is merged into the previous batch: BatchNorm layers cannot train on a
    single sample, and tier models may contain them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(num_samples, generator=generator)
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        single = batches.pop()  # popped first: batches[-1] is then the batch it joins
        batches[-1] = torch.cat([batches[-1], single])
    return batches


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """A fresh SGD optimiser; created per phase so no optimiser state has to survive between rounds."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


class DivergedError(ConfigError):
    """A server model's training loss became NaN or infinite: the run cannot go on, and what fixes it is a setting.

    A client that diverges sends non-finite answers, which the server refuses, and the run goes on without it; the
    server model is the run's, so it stops there, with one line naming what to change, rather than train on.
    """


def check_loss(loss: Tensor, what: str, setting: str) -> None:
    """Raise :class:`DivergedError` if ``loss`` is not finite, before it can reach the weights of ``what``."""
    if not bool(torch.isfinite(loss.detach()).all()):
        value = float(loss.detach().reshape(-1)[0])
        raise DivergedError(f"{what} diverged: its training loss is {value:g}. Lower {setting}")


def cpu_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state as detached CPU copies: what a party keeps, saves or sends without sharing storage."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (PyTorch's ``AveragedModel``), or None at ``decay`` 0.

    Call ``update_parameters(model)`` after every optimiser step; the first call copies the weights. Its
    ``module`` is the averaged model to predict with.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the average's decay must lie in [0, 1), got {decay}")
    if decay == 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """Eval-mode logits ``(N, C)`` (float32, on CPU) of ``model`` on inputs ``x`` ``(N, ...)``."""
    model.eval()
    outputs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    if not outputs:
        raise ValueError("cannot predict on an empty input")
    return torch.cat(outputs)


def accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    logit_offset: Tensor | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``; ``x`` ``(N, ...)``, ``y`` ``(N,)``.

    ``logit_offset`` ``(C,)``, when given, is added to every row of logits before the argmax (a label prior).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on N: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set")
    logits = predict_logits(model, x, batch_size, device)
    if logit_offset is not None:
        logits = logits + logit_offset.to(logits.dtype).reshape(1, -1)
    return float((logits.argmax(dim=1) == y.cpu()).double().mean())


def check_positions(positions: ArrayLike, num_samples: int) -> NDArray[np.int64]:
    """Validate transfer positions: 1-D, integer, unique, in ``[0, num_samples)``; returns int64 ``(n,)``."""
    array = np.asarray(positions)
    if array.ndim != 1:
        raise ValueError(f"positions must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"positions must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_samples):
        raise ValueError(f"positions must lie in [0, {num_samples}), got range [{array.min()}, {array.max()}]")
    if np.unique(array).size != array.size:
        raise ValueError("positions must be unique")
    return array


def check_logits(name: str, logits: ArrayLike, shape: tuple[int, int]) -> Tensor:
    """Validate logits of the expected ``shape`` and finiteness; returns a float32 CPU tensor.

    Knowledge from another party is the one input that can silently ruin a model (a NaN reaches every weight
    in one step), so it is checked before any training step uses it. Quantised log-probabilities (uint8, or uint5
    packed into ``packed_size(n, C)`` bytes) are decoded; every code of theirs is a valid one.
    """
    array = np.asarray(logits)
    rows, classes = shape
    if array.dtype == np.uint8 and array.ndim == 1 and array.size == packed_size(rows, classes):
        return torch.from_numpy(from_wire(array, classes))
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if array.dtype == np.uint8:
        return torch.from_numpy(from_wire(array))
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be floating point or uint8, got dtype {array.dtype}")
    # Checked as float32, what training reads: a float64 beyond float32's range is finite here and inf there.
    values = array.astype(np.float32, copy=True)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf) as float32")
    return torch.from_numpy(values)


LOGITS_DTYPES: tuple[str, ...] = ("float32", "float16", "uint8", "uint5")

#: The uint8 wire sends log-probabilities in ``[-LOG_PROB_RANGE, 0]`` in 255 even steps (0.078 nats): a softmax, a
#: KL divergence or an argmax of them equals that of the logits (a row's shift cancels), rounding aside, and a
#: probability below ``exp(-20)`` (2e-9) carries no knowledge worth a byte.
LOG_PROB_RANGE = 20.0
_LOG_PROB_STEP = LOG_PROB_RANGE / 255.0

#: The uint5 wire sends each log-probability as one of 32 levels, 5 bits each, the rows packed one after another
#: into a 1-D byte array (5/32 of float32). The levels lie about 0.32 nats apart down to ``-UINT5_RANGE`` (a
#: probability below ``exp(-10)``, 5e-5, moves no KD target) and each is a uint8 code, so an unpacked uint5
#: answer is a uint8 answer and decodes alike.
UINT5_RANGE = 10.0
_UINT5_BITS = 5
_UINT5_CODES = np.rint(np.arange(2**_UINT5_BITS) * (UINT5_RANGE / (2**_UINT5_BITS - 1)) / _LOG_PROB_STEP).astype(
    np.uint8
)


def packed_size(rows: int, num_classes: int) -> int:
    """Bytes of a uint5 array of ``rows`` rows over ``num_classes`` classes."""
    return -(-_UINT5_BITS * rows * num_classes // 8)


def wire_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype an array of the wire format ``name`` (one of :data:`LOGITS_DTYPES`) is sent as."""
    if name not in LOGITS_DTYPES:
        raise ValueError(f"logits dtype must be one of {LOGITS_DTYPES}, got {name}")
    return np.dtype(np.uint8 if name == "uint5" else name)


def to_wire(logits: Tensor, dtype: DTypeLike = np.float32) -> NDArray[Any]:
    """Logits ``(n, C)`` as a NumPy array of the wire ``dtype``: float32, float16 (half the payload), uint8
    (a quarter: quantised log-probabilities, see :data:`LOG_PROB_RANGE`) or "uint5" (5/32: coarser levels packed
    into ``packed_size(n, C)`` bytes, 1-D, see :data:`UINT5_RANGE`). Decode with :func:`from_wire`.

    float16 tops out at 65504; larger logits are clipped to it, since an inf would make the receiver reject
    the whole message.
    """
    name = dtype if dtype == "uint5" else np.dtype(dtype).name
    wire = wire_dtype(str(name))
    values = logits.detach().cpu().float()
    if name == "uint5":
        return _pack_uint5(torch.log_softmax(values, dim=-1).numpy())
    if wire == np.uint8:
        log_probs = torch.log_softmax(values, dim=-1).clamp(min=-LOG_PROB_RANGE).numpy()
        return np.rint(-log_probs / _LOG_PROB_STEP).astype(np.uint8)
    array = values.numpy()
    if wire == np.float16:
        limit = float(np.finfo(np.float16).max)
        array = np.clip(array, -limit, limit)
    return array.astype(wire)


def from_wire(array: NDArray[Any], num_classes: int | None = None) -> NDArray[np.float32]:
    """Logits as float32 from any wire format of :func:`to_wire` (uint8 and uint5: the log-probabilities they
    quantised). A packed uint5 array (1-D) needs ``num_classes``, C, to be unpacked to ``(n, C)``."""
    if array.dtype == np.uint8:
        if array.ndim == 1:
            if num_classes is None:
                raise ValueError("packed uint5 logits need the number of classes to be decoded")
            array = _unpack_uint5(array, num_classes)
        return array.astype(np.float32) * np.float32(-_LOG_PROB_STEP)
    return array.astype(np.float32)


def confidence(values: NDArray[Any]) -> NDArray[np.float64]:
    """The top-class probability of each row of logits (or log-probabilities) ``(n, C)``: how sure a client says
    its answer is (which a liar chooses freely)."""
    logits = np.asarray(values, dtype=np.float64)
    if logits.shape[0] == 0:
        return np.zeros(0)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=1)


def _pack_uint5(log_probs: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Each log-probability ``(n, C)`` as the index of its nearest uint5 level, 5 bits each, packed 1-D."""
    _check_uint5_classes(log_probs.shape[1])
    levels = -_UINT5_CODES.astype(np.float32) * np.float32(_LOG_PROB_STEP)
    index = np.abs(log_probs[..., None] - levels).argmin(axis=-1).astype(np.uint8)
    bits = (index[..., None] >> np.arange(_UINT5_BITS - 1, -1, -1, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(-1))


def _unpack_uint5(packed: NDArray[np.uint8], num_classes: int) -> NDArray[np.uint8]:
    """The uint8 codes ``(n, C)`` of packed uint5 levels (the padding bits of the last byte are ignored)."""
    _check_uint5_classes(num_classes)
    rows = packed.size * 8 // (_UINT5_BITS * num_classes)
    bits = np.unpackbits(packed, count=rows * num_classes * _UINT5_BITS).reshape(rows, num_classes, _UINT5_BITS)
    index = bits @ (1 << np.arange(_UINT5_BITS - 1, -1, -1))
    return _UINT5_CODES[index]


def _check_uint5_classes(num_classes: int) -> None:
    """A row of two or more classes takes at least 10 bits, more than a byte's padding: only then does a packed
    array's size tell its number of rows."""
    if num_classes < 2:
        raise ValueError(f"uint5 logits need at least 2 classes, got {num_classes}")
