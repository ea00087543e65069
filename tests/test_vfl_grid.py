"""QuickPollGrid: replies are pulled after short pauses, all of them, and never past the timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict

from fl_kd import runtime
from fl_kd.strategies import vfl_grid
from fl_kd.strategies.vfl_grid import LAST_PULL_PAUSE, QuickPollGrid
from tests.flower_loopback import set_task_identity


class SlowGrid:
    """Replies to each pushed message on the ``ready_after``-th pull that asks for it; records the pulls."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.pulls = 0
        self.pushed: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return [3, 5]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for index, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{index}"
            self.pushed[f"m{index}"] = message
            ids.append(f"m{index}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        return [Message(RecordDict(), reply_to=self.pushed[message_id]) for message_id in message_ids]


def _messages() -> list[Message]:
    set_task_identity()  # a Message needs the run it belongs to
    return [Message(RecordDict(), dst_node_id=node, message_type="query.embed") for node in (3, 5)]


def test_every_reply_comes_back_soon_after_it_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(vfl_grid.time, "sleep", pauses.append)
    slow = SlowGrid(ready_after=4)
    grid = QuickPollGrid(slow)
    replies = list(grid.send_and_receive(_messages(), timeout=10.0))
    assert sorted(reply.metadata.reply_to_message_id for reply in replies) == ["m0", "m1"]
    assert slow.pulls == 4
    assert pauses == pytest.approx([0.0005, 0.00075, 0.001125])  # not Flower's fixed 0.1 s each
    assert list(grid.get_node_ids()) == [3, 5]


def test_missing_replies_end_at_the_timeout() -> None:
    slow = SlowGrid(ready_after=10**9)
    start = time.monotonic()
    assert list(QuickPollGrid(slow).send_and_receive(_messages(), timeout=0.3)) == []
    waited = time.monotonic() - start
    assert 0.3 <= waited < 0.3 + LAST_PULL_PAUSE + 1.0  # the last pause is cut to the time left (slack: busy CPU)
    assert slow.pulls < 40  # the pauses grow: a slow exchange is not polled in a busy loop


class InMemoryState:
    """The part of Flower's in-memory LinkState the grid's replies pass through."""

    def __init__(self) -> None:
        self.stored: list[Message] = []

    def store_message_res(self, message: Message) -> str | None:
        self.stored.append(message)
        return message.metadata.message_id


class InMemorySlowGrid(SlowGrid):
    """A simulation's grid: its replies are stored in ``state`` by the engine's thread while the ServerApp waits."""

    def __init__(self) -> None:
        super().__init__(ready_after=10**9)
        self.state = InMemoryState()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        if self.pulls == 1:  # the engine stores both replies while the first pull finds none
            for message_id in sorted(message_ids):
                self.state.store_message_res(Message(RecordDict(), reply_to=self.pushed[message_id]))
            return []
        asked = set(message_ids)
        return [reply for reply in self.state.stored if reply.metadata.reply_to_message_id in asked]


class RecordingEvent(threading.Event):
    """An event that records what each wait returned: True when it was set, False when the time ran out."""

    waits: list[bool] = []

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        RecordingEvent.waits.append(woken)
        return woken


def test_in_a_simulation_a_stored_reply_ends_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.threading, "Event", RecordingEvent)
    monkeypatch.setattr(RecordingEvent, "waits", [])
    monkeypatch.setattr(vfl_grid, "FIRST_PULL_PAUSE", 60.0)  # a pause that runs out would fail the test's timeout
    slow = InMemorySlowGrid()
    replies = list(QuickPollGrid(slow).send_and_receive(_messages(), timeout=120.0))
    assert sorted(reply.metadata.reply_to_message_id for reply in replies) == ["m0", "m1"]
    assert slow.pulls == 2
    assert RecordingEvent.waits == [True]  # woken by the stored replies, not by the end of the pause
    assert len(slow.state.stored) == 2  # the state still stores every reply itself
