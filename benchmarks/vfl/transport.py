"""``python -m benchmarks.vfl.transport``: the least time one exchange of messages takes in Flower's simulation.

Split training needs two exchanges per mini-batch, one after the other (the label party's step needs the feature
parties' embeddings; their next embeddings need its gradients). This measures what one exchange costs when the
ClientApp does nothing: a ServerApp sends a message carrying one mini-batch's embeddings (``--rows`` x ``--width``
float32) to one node and waits for the echo, ``--exchanges`` times, through ``flwr.simulation.run_simulation``
(Flower's simulation engine and its Ray backend, the transport ``flwr run`` uses), with fl-kd's prompt delivery
(:mod:`fl_kd.clients.vfl_engine`) and quick-polling grid (:mod:`fl_kd.strategies.vfl_grid`) in place as in a VFL
run. The ServerApp runs in this process here, with Flower's in-memory grid; through ``flwr run`` it talks to the
SuperLink over gRPC as well, so the floor measured here is a lower bound of that run's.

With the in-process seconds per epoch of the issue's job (measured right before, as ``benchmarks.vfl.speed`` does)
the section says how far below the 2x goal the transport alone already is: an epoch through Flower takes at least
the in-process epoch plus its exchanges times this floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import REPO_ROOT, command_line, machine_line, markdown_table, run_stamp, write_section
from benchmarks.vfl.speed import GOAL, ISSUE_OVERRIDES, run_once
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.vfl.transport"
BEGIN, END = "<!-- vfl-transport:begin -->", "<!-- vfl-transport:end -->"  # see benchmarks.common.kept_sections
WARMUP = 20
"""Exchanges before the timed ones (Ray actors start, caches warm)."""
EXCHANGES_PER_BATCH = 2
"""Split training's exchanges per mini-batch (embed with the previous gradients, then the label party's step)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=300, help="timed exchanges (default: 300)")
    parser.add_argument("--rows", type=int, default=64, help="rows of the echoed array: the batch (default: 64)")
    parser.add_argument("--width", type=int, default=10, help="its columns: the embedding (default: 10)")
    parser.add_argument("--batches", type=int, default=79, help="mini-batches per epoch of the issue's job")
    parser.add_argument(
        "--state-kb",
        type=int,
        default=1000,
        help="also time the echo with this many kB in the ClientApp's context.state (0: skip; default: 1000)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "vfl-transport", help="run folders")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.exchanges < 1 or args.rows < 1 or args.width < 1 or args.batches < 1:
        parser.error("need positive --exchanges, --rows, --width and --batches")
    return args


def echo_round_trips(exchanges: int, rows: int, width: int, state_kb: int = 0) -> list[float]:
    """Seconds of each of ``exchanges`` timed echo exchanges through Flower's simulation (two SuperNodes).

    ``state_kb``: kilobytes the ClientApp keeps in ``context.state`` (as a VFL party keeps its models and optimiser
    state there), which the engine carries to the ClientApp and back with every message.
    """
    # The engine module must be loaded before fl-kd's delivery is put in its place, and before the engine starts.
    import flwr.server.superlink.fleet.vce.vce_api  # noqa: F401
    from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_kd.clients import vfl_engine
    from fl_kd.strategies.vfl_grid import QuickPollGrid

    if not vfl_engine.install():
        raise RuntimeError("fl-kd's prompt delivery could not be put in place in this flwr")
    seconds: list[float] = []
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.query()
    def echo(msg: Message, context: Context) -> Message:
        if state_kb and "state" not in context.state:
            context.state["state"] = ArrayRecord({"blob": Array(np.zeros(state_kb * 256, dtype=np.float32))})
        return Message(msg.content, reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        quick = QuickPollGrid(grid)
        deadline = time.monotonic() + 120
        while not list(quick.get_node_ids()) and time.monotonic() < deadline:
            time.sleep(0.5)  # the SuperNodes register after the ServerApp starts
        node = sorted(quick.get_node_ids())[0]
        payload = np.zeros((rows, width), dtype=np.float32)
        for index in range(WARMUP + exchanges):
            content = RecordDict({"arrays": ArrayRecord({"embedding": Array(payload)})})
            start = time.perf_counter()
            replies = list(quick.send_and_receive([Message(content, dst_node_id=node, message_type="query")]))
            elapsed = time.perf_counter() - start
            if len(replies) != 1 or replies[0].has_error():
                raise RuntimeError(f"exchange {index}: no usable echo")
            if index >= WARMUP:
                seconds.append(elapsed)

    run_simulation(server_app, client_app, num_supernodes=2, backend_config={"client_resources": {"num_cpus": 1}})
    if len(seconds) != exchanges:
        raise RuntimeError(f"only {len(seconds)} of {exchanges} exchanges were timed: the ServerApp failed")
    return seconds


def render(
    seconds: Sequence[float],
    inprocess: Sequence[float],
    args: argparse.Namespace,
    command: str,
    when: str,
    load: float | None = None,
    with_state: Sequence[float] = (),
) -> str:
    """The section: the floor per exchange, and what it means for the Flower/in-process ratio per epoch.

    ``with_state``: the same exchanges with ``args.state_kb`` kB kept in ``context.state``.
    """
    floor = statistics.median(seconds)
    quartiles = statistics.quantiles(seconds, n=4)
    per_epoch = EXCHANGES_PER_BATCH * args.batches * floor
    rows = []
    for index, epoch in enumerate(inprocess, start=1):
        rows.append([str(index), f"{epoch:.2f}", f"{per_epoch:.2f}", f"{1 + per_epoch / epoch:.1f}x"])
    least = min(1 + per_epoch / epoch for epoch in inprocess)
    verdict = (
        f"So the transport alone keeps an epoch through Flower at least **{least:.1f}x** the in-process one, above "
        f"the goal of {GOAL:g}x before fl-kd does any work per exchange."
        if least > GOAL
        else f"The transport alone leaves room for the goal of {GOAL:g}x (at least {least:.1f}x)."
    )
    job = f"fl-kd-vfl {shlex.join(ISSUE_OVERRIDES)} simulation.backend=inprocess"
    return "\n".join(
        [
            BEGIN,
            "### The transport's floor: an exchange with a ClientApp that does nothing",
            "",
            f"{args.exchanges} exchanges (after {WARMUP} untimed) of a {args.rows} x {args.width} float32 array "
            "with a ClientApp that sends it back, through `flwr.simulation.run_simulation` (Flower's simulation "
            "engine, Ray backend, two SuperNodes), with fl-kd's prompt delivery and quick-polling grid: median "
            f"**{1000 * floor:.1f} ms** per exchange (quartiles {1000 * quartiles[0]:.1f} and "
            f"{1000 * quartiles[2]:.1f} ms). An epoch of the issue's job has {args.batches} mini-batches of "
            f"{EXCHANGES_PER_BATCH} exchanges that cannot overlap: at least {per_epoch:.2f} s of transport. "
            f"In-process seconds per epoch of `{job}`, measured just before:",
            "",
            markdown_table(["run", "in-process s/epoch", "transport floor s/epoch", "least Flower / in-process"], rows),
            "",
            verdict,
            "",
            *(
                [
                    f"The same echo with {args.state_kb} kB kept in the ClientApp's `context.state` (Flower carries "
                    "it to the ClientApp and back with every message): median "
                    f"**{1000 * statistics.median(with_state):.1f} ms** per exchange. A VFL party's models and Adam "
                    "state on Fashion-MNIST halves are about 0.6 MB: hence `training.party_state=node`, which keeps "
                    "them in a file on the node.",
                    "",
                ]
                if with_state
                else []
            ),
            f"Command: `{command}` ({when}"
            + ("" if load is None else f"; 1-minute load average before: {load:.1f}")
            + f"). Machine: {machine_line()}.",
            END,
            "",
        ]
    )


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Time the in-process epochs, then the echo exchanges; write the section."""
    args = parse_args(argv)
    command = command_line(ENTRY, argv)
    stamp = run_stamp()
    load = os.getloadavg()[0]
    inprocess = []
    for repeat in range(2):
        run = run_once("inprocess", ISSUE_OVERRIDES, args.out / stamp / f"{repeat}-inprocess", retries=0)
        inprocess.append(run.seconds_per_epoch)
        print(f"in-process {repeat + 1}: {run.seconds_per_epoch:.2f} s per epoch", flush=True)
    seconds = echo_round_trips(args.exchanges, args.rows, args.width)
    print(f"echo: median {1000 * statistics.median(seconds):.2f} ms over {len(seconds)} exchanges", flush=True)
    with_state = echo_round_trips(args.exchanges, args.rows, args.width, args.state_kb) if args.state_kb else []
    if with_state:
        print(
            f"echo with {args.state_kb} kB of state: median {1000 * statistics.median(with_state):.2f} ms", flush=True
        )
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = render(seconds, inprocess, args, command, when, load, with_state)
    write_section(args.report, section)
    print("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
