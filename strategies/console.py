"""What a ServerApp shows the user: Flower's per-round dumps go to a log file in the run folder, not the console.

Flower's ``Strategy.start`` logs every aggregated MetricRecord and, at the end, every metric of every round; in a
simulation or deployment all of that is streamed to the user's terminal. Inside :func:`quiet_flower_console` the
ServerApp process keeps writing Flower's INFO records to ``<run folder>/<name>.log`` while its console (the stream
``flwr run`` shows) carries warnings, errors and the lines the app prints itself: one per round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.common.logger import FLOWER_LOGGER, console_handler


@contextmanager
def quiet_flower_console(log_file: Path) -> Iterator[None]:
    """Send Flower's INFO logging to ``log_file`` instead of the console for the duration of the block."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    FLOWER_LOGGER.addHandler(file_handler)
    level = console_handler.level
    console_handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        console_handler.setLevel(level)
        FLOWER_LOGGER.removeHandler(file_handler)
        file_handler.close()
