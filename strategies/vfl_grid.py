"""A Flower ``Grid`` that looks for replies soon after sending: split training's exchanges last milliseconds.

``Grid.send_and_receive`` pushes the messages, then pulls and, while replies are missing, sleeps a fixed interval:
0.1 s on the in-memory grid of a simulation, 3 s on a SuperLink's grid. Split training exchanges three rounds of
messages per mini-batch, each a few milliseconds of work, so that fixed sleep was most of a Flower epoch (27.8 s
against 0.72 s in-process on Fashion-MNIST halves). :class:`QuickPollGrid` wraps the run's grid and pulls again after a
pause that starts at half a millisecond and grows by half each time up to 0.1 s: a reply is found within about half
its own time, and a slow one still costs at most ten pulls a second. In a simulation the grid is Flower's
in-memory one, whose LinkState lives in this process: there :class:`QuickPollGrid` is also told when a reply is
stored and pulls at once instead of waiting out its pause.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fl_kd.runtime import signal_after_calls

FIRST_PULL_PAUSE = 0.0005
"""Seconds before the second look for replies."""
PAUSE_GROWTH = 1.5
"""Each further pause is this many times the previous one..."""
LAST_PULL_PAUSE = 0.1
"""...up to this many seconds (the in-memory grid's fixed interval)."""


class QuickPollGrid(Grid):
    """``grid`` with a ``send_and_receive`` that pulls replies after short, growing pauses; all else delegated.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self._stored = signal_after_calls(getattr(grid, "state", None), "store_message_res")

    def set_run(self, run: Run) -> None:  # noqa: D102
        self.grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.grid.run

    def create_message(  # noqa: D102
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:  # noqa: D102
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and pull their replies until all came or ``timeout`` seconds passed (None: no limit)."""
        waiting = {message_id for message_id in self.push_messages(messages) if message_id}
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FIRST_PULL_PAUSE
        replies: list[Message] = []
        while waiting:
            if self._stored is not None:
                self._stored.clear()  # before pulling: a reply stored during the pull sets it again
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
            left = None if deadline is None else deadline - time.monotonic()
            if not waiting or (left is not None and left <= 0):
                break
            self._wait(pause if left is None else min(pause, left))
            pause = min(pause * PAUSE_GROWTH, LAST_PULL_PAUSE)
        return replies

    def _wait(self, seconds: float) -> None:
        """Pause before the next pull; in a simulation, only until a reply is stored."""
        if self._stored is None:
            time.sleep(seconds)
        else:
            self._stored.wait(seconds)
