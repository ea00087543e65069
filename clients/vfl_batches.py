"""What each party has done with a training batch, kept in ``context.state`` so a batch is used once.

The feature party remembers the ids of each batch it embedded, and of which epoch, until that batch's gradient
arrives (a gradient for other samples or of another epoch, or a second one, is refused), and embeds batches in
(epoch, batch) order, so a request replayed later cannot open a batch to a second gradient; the label party
remembers its last step, so a request delivered twice or out of order is not stepped on again.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from numpy.typing import NDArray

from fl_kd.protocol import decode_array, record

EMBEDDED = "vfl-embedded"
EMBEDDED_UP_TO = "vfl-embedded-up-to"
STEPPED = "vfl-stepped"


# -- what the feature party embedded ---------------------------------------------------------------------------------
def check_embed_order(context: Context, epoch: int, batches: list[int]) -> None:
    """Refuse (``ValueError``) an embedding request that is not after every batch embedded before.

    The server embeds the batches of an epoch in order, and an epoch after the last one's gradients; a request of an
    earlier (epoch, batch), delivered twice or replayed, would reopen a batch whose gradient was applied.
    """
    found = record(context.state, EMBEDDED_UP_TO)
    last_epoch, last_batch = found.get("epoch"), found.get("batch")
    if batches and isinstance(last_epoch, int) and isinstance(last_batch, int):
        if (epoch, min(batches)) <= (last_epoch, last_batch):
            raise ValueError(f"batch {min(batches)} of epoch {epoch} is not after the last batch embedded "
                             f"(batch {last_batch} of epoch {last_epoch})")  # fmt: skip


def save_embedded(context: Context, epoch: int, ids: Mapping[int, NDArray[np.int64]]) -> None:
    """Remember the sample ids of each batch just embedded in ``epoch``: only these may receive a gradient, once."""
    context.state[EMBEDDED] = ArrayRecord(
        {str(b): Array(np.asarray(batch, dtype=np.int64)) for b, batch in ids.items()}
    )
    if ids:
        context.state[EMBEDDED_UP_TO] = ConfigRecord({"epoch": epoch, "batch": max(ids)})


def embedded_ids(context: Context, epoch: int, batch: int) -> NDArray[np.int64] | None:
    """The ids this party embedded for ``batch`` of ``epoch`` and has not yet received a gradient for (None: there
    are none)."""
    entries = record(context.state, EMBEDDED)
    if str(batch) not in entries or record(context.state, EMBEDDED_UP_TO).get("epoch") != epoch:
        return None
    return decode_array(entries[str(batch)]).astype(np.int64)


def forget_embedded(context: Context, batch: int) -> None:
    """``batch``'s gradient is applied: no second gradient may apply to it."""
    if EMBEDDED in context.state and str(batch) in context.state.array_records[EMBEDDED]:
        del context.state.array_records[EMBEDDED][str(batch)]


# -- what the label party stepped on ---------------------------------------------------------------------------------
def last_step(context: Context) -> tuple[int, int] | None:
    """The (epoch, batch) of the label party's last training step (None before its first)."""
    found = record(context.state, STEPPED)
    epoch, batch = found.get("epoch"), found.get("batch")
    return (epoch, batch) if isinstance(epoch, int) and isinstance(batch, int) else None


def save_step(context: Context, epoch: int, batch: int) -> None:
    """Batches are stepped on in (epoch, batch) order, each once: no later request may name this one or earlier."""
    context.state[STEPPED] = ConfigRecord({"epoch": epoch, "batch": batch})
