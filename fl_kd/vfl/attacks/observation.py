"""The attacker's memory: what a feature party saw during split training, kept for attacks to replay.

A Flower ClientApp is rebuilt for every message, so a live attack object cannot follow training from one message
to the next. The attacking feature party logs instead, per batch, the sample ids, the embedding it sent and the
gradient it received; :meth:`ObservationLog.replay` feeds them, in order, to fresh attacks, which then see
exactly what they would have seen live (the in-process loop calls the same hook directly). The cost is one
embedding and one gradient per sample and epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from fl_kd.vfl.hooks import FeaturePartyAttack

_SENT = "sent."
_PARTS = ("ids", "emb", "grad")


class ObservationLog:
    """Observations ``(ids (B,), embedding (B, D), gradient (B, D))`` of one feature party, in the order seen.

    Entries are arrays under string keys, so the log lives in any key -> array store (a Flower ``ArrayRecord``
    in ``context.state``); a stored entry is turned into a numpy array by ``decode`` only when it is read.

    Parameters
    ----------
    entries : Mapping[str, Any] | None (default: None)
        A log's :meth:`entries` as stored earlier; empty for a new log.
    decode : Callable[[Any], NDArray] (default: numpy.asarray)
        Reads one stored entry (e.g. :func:`fl_kd.protocol.decode_array` for a Flower ``Array``).
    """

    def __init__(
        self, entries: Mapping[str, Any] | None = None, decode: Callable[[Any], NDArray[Any]] = np.asarray
    ) -> None:
        self._entries: dict[str, Any] = dict(entries or {})
        self._decode = decode
        self._count = sum(1 for key in self._entries if not key.startswith(_SENT) and key.endswith(".ids"))

    def __len__(self) -> int:
        """Number of logged observations."""
        return self._count

    def entries(self) -> dict[str, Any]:
        """Everything to store: logged observations and the embeddings still waiting for their gradient."""
        return dict(self._entries)

    def sent(self, embeddings: Mapping[int, NDArray[Any]]) -> None:
        """Remember the embeddings just sent, by batch index, until their gradients come back (older ones go)."""
        for key in [key for key in self._entries if key.startswith(_SENT)]:
            del self._entries[key]
        for batch, embedding in embeddings.items():
            self._entries[f"{_SENT}{batch}"] = np.array(embedding, copy=True)

    def observe(self, batch: int, ids: NDArray[Any], gradient: NDArray[Any]) -> bool:
        """Log the gradient received for ``batch`` with the embedding sent for it; ``True`` when logged.

        Nothing is logged when no embedding of ``batch`` was sent, or when the gradient cannot belong to it
        (another shape, NaN or inf): a malformed gradient carries nothing an attack could use.
        """
        sent = self._entries.get(f"{_SENT}{batch}")
        if sent is None:
            return False
        embedding = self._decode(sent)
        if gradient.shape != embedding.shape or not bool(np.isfinite(gradient).all()):
            return False
        for part, array in zip(_PARTS, (ids, embedding, gradient), strict=True):
            self._entries[f"{self._count:07d}.{part}"] = np.array(array, copy=True)
        self._count += 1
        return True

    def replay(self, attacks: Iterable[FeaturePartyAttack]) -> None:
        """Feed every logged observation, in order, to each attack's ``on_gradient`` hook."""
        attacks = list(attacks)
        for index in range(self._count):
            ids, embedding, gradient = (self._tensor(f"{index:07d}.{part}") for part in _PARTS)
            for attack in attacks:
                attack.on_gradient(ids, embedding, gradient)

    def _tensor(self, key: str) -> torch.Tensor:
        # Copied: a decoded buffer may be read-only, and torch wants memory it may write.
        return torch.from_numpy(np.array(self._decode(self._entries[key]), copy=True))
