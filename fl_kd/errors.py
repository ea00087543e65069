"""The errors that are the user's to fix: a setting, a dataset not on this machine, an unusable checkpoint.

Each already names the key or file in its message, so every ``fl-kd-*`` command ends on one with that one line
(:mod:`fl_kd.simulations.cli`), and a Flower app that raises one leaves it in the run folder for its command to say
(:func:`fl_kd.results.record_server_error`). Errors of other kinds are fl-kd's, and keep their traceback.
"""

from __future__ import annotations

from fl_kd.checkpoint import CheckpointError
from fl_kd.config import ConfigError
from fl_kd.data import DatasetError, DatasetNotAvailableError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DatasetError, DatasetNotAvailableError, CheckpointError)
