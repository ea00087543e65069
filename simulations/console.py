"""What a run shows a person: one line per round or epoch and a final table; everything else goes to a log file.

A Flower simulation runs in other processes whose output (Flower's start-up banner, the log stream, Ray) is
written to file descriptors 1 and 2; :func:`quiet_console` points those at the run folder's log file for the
duration of the run, and :func:`follow_progress` echoes the rows the ServerApp writes as it goes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

Report = Callable[[dict[str, Any]], None]


@contextmanager
def quiet_console(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr (this process and its children) to ``log_path``.

    Yields a stream to the real console, for the lines a person should see.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            os.dup2(log_fd, fd)
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)
        console.close()


@contextmanager
def follow_progress(path: Path, report: Report | None, interval: float = 0.5) -> Iterator[None]:
    """Call ``report`` with each JSON row appended to ``path`` while the block runs (and with any left at its end)."""
    path.unlink(missing_ok=True)
    if report is None:
        yield
        return
    done = threading.Event()
    offset = 0

    def read_new() -> None:
        nonlocal offset
        if not path.exists():
            return
        with path.open() as stream:
            stream.seek(offset)
            while True:
                line = stream.readline()
                if not line.endswith("\n"):
                    break  # a row still being written: read it next time
                offset = stream.tell()
                report(json.loads(line))

    def loop() -> None:
        while not done.wait(interval):
            read_new()

    thread = threading.Thread(target=loop, name="fl-kd-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        read_new()
