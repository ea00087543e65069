"""What each party has done with a training batch, kept in ``context.state`` so a batch is used once.

The feature party remembers the ids of each batch it embedded until that batch's gradient arrives (a gradient for
other samples, or a second one, is refused); the label party remembers its last step, so a request delivered twice
or out of order is not stepped on again.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from numpy.typing import NDArray

from fl_kd.protocol import decode_array, record

EMBEDDED = "vfl-embedded"
STEPPED = "vfl-stepped"


# -- what the feature party embedded ---------------------------------------------------------------------------------
def save_embedded(context: Context, ids: Mapping[int, NDArray[np.int64]]) -> None:
    """Remember the sample ids of each batch just embedded: only these may receive a gradient, once."""
    context.state[EMBEDDED] = ArrayRecord(
        {str(b): Array(np.asarray(batch, dtype=np.int64)) for b, batch in ids.items()}
    )


def embedded_ids(context: Context, batch: int) -> NDArray[np.int64] | None:
    """The ids this party embedded for ``batch`` and has not yet received a gradient for (None: there are none)."""
    entries = record(context.state, EMBEDDED)
    return decode_array(entries[str(batch)]).astype(np.int64) if str(batch) in entries else None


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
