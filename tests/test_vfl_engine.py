"""The simulation engine's message pump as the VFL ClientApp installs it: prompt, complete, in order, stoppable."""

from __future__ import annotations

import threading
import types
from collections.abc import Mapping
from queue import Empty, Queue

import pytest
from flwr.app import Message, RecordDict

from fl_kd.clients import vfl_engine
from tests.flower_loopback import set_task_identity


class EngineState:
    """The part of Flower's in-memory LinkState the pump uses: stored messages, each handed out once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: dict[int, list[Message]] = {}

    def store_message_ins(self, message: Message) -> str | None:
        with self.lock:
            self.waiting.setdefault(message.metadata.dst_node_id, []).append(message)
        return message.metadata.message_id

    def get_message_ins(self, node_id: int, limit: int | None = None) -> list[Message]:
        with self.lock:
            found = self.waiting.get(node_id, [])[:limit]
            del self.waiting.get(node_id, [])[: len(found)]
            return found


def _message(node: int) -> Message:
    set_task_identity()
    return Message(RecordDict(), dst_node_id=node, message_type="query.embed")


def test_messages_reach_the_queue_once_in_order_without_waiting_out_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An idle interval far beyond the test's waits: only the signal of a stored message can wake the pump in time.
    monkeypatch.setattr(vfl_engine, "IDLE_WAIT", 3600.0)
    state, queue, stop = EngineState(), Queue[Message](), threading.Event()
    pump = threading.Thread(target=vfl_engine.deliver_promptly, args=(state, queue, {11: 0, 22: 1}, stop))
    pump.start()
    try:
        sent = [_message(11), _message(22), _message(11)]
        for message in sent:
            state.store_message_ins(message)  # through the wrapper the pump put on the state
        received = [queue.get(timeout=30) for _ in sent]
        assert sorted(map(id, received)) == sorted(map(id, sent))
        assert [m for m in received if m.metadata.dst_node_id == 11] == [sent[0], sent[2]]
        with pytest.raises(Empty):
            queue.get(timeout=0.2)  # nothing twice
    finally:
        stop.set()
        state.store_message_ins(_message(11))  # wakes the pump to see the stop event
        pump.join(timeout=30)
    assert not pump.is_alive()


def _engine(add_messages_to_queue: object) -> types.ModuleType:
    engine = types.ModuleType(vfl_engine.ENGINE_MODULE)
    engine.add_messages_to_queue = add_messages_to_queue  # type: ignore[attr-defined]
    return engine


def flower_pump(state: object, queue: Queue[Message], nodes_mapping: Mapping[int, int], f_stop: object) -> None:
    """Stands for flwr 1.42's ``add_messages_to_queue`` (same parameters)."""


def test_install_replaces_the_pump_only_in_an_engine_it_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(vfl_engine.sys.modules, vfl_engine.ENGINE_MODULE, raising=False)
    assert not vfl_engine.install()  # a Ray worker, a SuperNode, a test: no engine here

    engine = _engine(flower_pump)
    monkeypatch.setitem(vfl_engine.sys.modules, vfl_engine.ENGINE_MODULE, engine)
    assert vfl_engine.install()
    assert engine.add_messages_to_queue is vfl_engine.deliver_promptly
    assert vfl_engine.install()  # twice is once

    def other_pump(state: object, queue: object) -> None:
        """A Flower whose pump takes other arguments."""

    changed = _engine(other_pump)
    monkeypatch.setitem(vfl_engine.sys.modules, vfl_engine.ENGINE_MODULE, changed)
    assert not vfl_engine.install()
    assert changed.add_messages_to_queue is other_pump


def test_the_installed_flower_has_the_pump_this_module_replaces() -> None:
    # The real engine module of the installed flwr: fails when an upgrade renames or changes the function.
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    try:
        assert vfl_engine.install()
        assert vce_api.add_messages_to_queue is vfl_engine.deliver_promptly
    finally:
        vce_api.add_messages_to_queue = original
