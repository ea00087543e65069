"""What every ``fl-kd-*`` command does with a user's mistake: one clear line and exit code 2, not a traceback.

A bad config value, a dataset that is not on this machine, or an unusable checkpoint is the user's to fix, and the
message already names the key or file; a Hydra traceback of dozens of lines would only hide it.
``HYDRA_FULL_ERROR=1`` still shows the whole traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from fl_kd.errors import USER_ERRORS

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "user_errors_exit"]
EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_exit(task: F) -> F:
    """Decorate a Hydra task function (below ``@hydra.main``), or a benchmark's ``main``, so user errors end in one
    line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1`` shows the traceback)."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
