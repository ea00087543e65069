"""A Flower ``Grid`` that delivers messages to a ClientApp in this process, one Context per simulated node.

It runs the real strategy against the real ClientApp handlers without Ray or a SuperLink, so protocol tests
are fast, and a ``tamper`` hook can replace, drop or duplicate replies to play a faulty or malicious client.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Tamper = Callable[[Message, Message], list[Message]]

#: Run ids of this process's grids. Each grid is a run of its own, unique across the test workers too: a VFL party
#: keeps its state under the system's temporary folder by run and node id, and two workers' runs sharing an id
#: removed each other's saves.
_RUN_IDS = itertools.count((os.getpid() % 2**20) << 20)


def set_task_identity() -> None:
    """Messages need a task identity; outside a Flower run there is none, so tests set one."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class LoopbackGrid(Grid):
    """Deliver each message to ``client_app`` with the destination node's persistent Context."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, str | int | float | bool],
        tamper: Tamper | None = None,
        node_configs: list[dict[str, str | int]] | None = None,
    ) -> None:
        """``node_configs`` adds keys to each node's config (a deployed node's data and tier)."""
        set_task_identity()
        self.client_app = client_app
        self.tamper = tamper
        # Node ids deliberately unlike partition ids, as in a real federation.
        run_id = next(_RUN_IDS)
        self.contexts = {
            1000 + 7 * pid: Context(
                run_id=run_id,
                node_id=1000 + 7 * pid,
                node_config={
                    "partition-id": pid,
                    "num-partitions": num_nodes,
                    **(node_configs or [{}] * num_nodes)[pid],
                },
                state=RecordDict(),
                run_config=run_config,
            )
            for pid in range(num_nodes)
        }

    def set_run(self, run: Run) -> None:  # noqa: D102
        pass

    @property
    def run(self) -> Run:  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run each message through the ClientApp; a raising handler becomes an error reply, as in Flower."""
        replies: list[Message] = []
        for message in messages:
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.client_app(message, context)
            except Exception as err:  # noqa: BLE001 - Flower turns any ClientApp exception into an error reply
                reason = f"{type(err).__name__}: {err}"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
            replies.extend(self.tamper(message, reply) if self.tamper else [reply])
        return replies
