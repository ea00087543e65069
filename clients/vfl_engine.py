"""Flower's simulation engine, prompt: a message reaches the ClientApp as soon as the ServerApp has sent it.

In flwr 1.42 the simulation engine (``flwr.server.superlink.fleet.vce.vce_api``) runs a thread,
``add_messages_to_queue``, that looks for new messages in its in-memory LinkState and then sleeps 0.1 s. An exchange
of split training is a few milliseconds of work and a Flower epoch on Fashion-MNIST halves has about 160 of them, so
that sleep, paid once per exchange, was most of the epoch (about 16 of 19 s). :func:`deliver_promptly` does that
thread's job, but waits for the LinkState to store a message (0.1 s at most, so that it notices the engine's stop
event as soon as before) and hands on everything waiting at once.

:func:`install` puts it in the engine's place. The ClientApp imports this module and calls it: in the engine's own
process Flower loads the ClientApp before it starts that thread (``start_vce`` loads it, then ``run_api`` starts the
thread), so the thread runs :func:`deliver_promptly`. Anywhere else (Ray workers, a SuperNode, tests) the engine is
not loaded and nothing changes. Which message reaches which node, and in what order, is the engine's as before: only
the wait changes.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Mapping
from queue import Queue
from typing import Any

from flwr.app import Message

from fl_kd.runtime import signal_after_calls

ENGINE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
"""The module of flwr's simulation engine that defines ``add_messages_to_queue``."""
IDLE_WAIT = 0.1
"""Seconds between looks when no message arrives: the engine's own interval."""
_PARAMETERS = ["state", "queue", "nodes_mapping", "f_stop"]


def deliver_promptly(
    state: Any, queue: Queue[Message], nodes_mapping: Mapping[int, int], f_stop: threading.Event
) -> None:
    """Put each node's new messages on the engine's ``queue`` as soon as ``state`` stores them, until ``f_stop``.

    The engine's ``add_messages_to_queue`` with the same arguments: it asks ``state`` for at most one message per
    node per look, in node order, and looks again at once after finding one; it waits only while nothing came.
    """
    stored = signal_after_calls(state, "store_message_ins")
    if stored is None:
        raise TypeError(f"{type(state).__name__} has no store_message_ins: not the simulation engine's LinkState")
    while not f_stop.is_set():
        stored.clear()  # before looking: a message stored during the look sets it again
        delivered = False
        for node_id in nodes_mapping:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                delivered = True
        if not delivered:
            stored.wait(IDLE_WAIT)


def install() -> bool:
    """Run :func:`deliver_promptly` in place of the engine's ``add_messages_to_queue``, if the engine is loaded here.

    Returns whether it is in place; a Flower whose function takes other arguments is left as it is.
    """
    engine = sys.modules.get(ENGINE_MODULE)
    if engine is None:
        return False
    current = getattr(engine, "add_messages_to_queue", None)
    if current is deliver_promptly:
        return True
    if current is None or list(inspect.signature(current).parameters) != _PARAMETERS:
        return False
    engine.add_messages_to_queue = deliver_promptly  # type: ignore[attr-defined]
    return True
