"""Reading a finished job's record (``result.json``): its last round's figures and which job it was."""

from __future__ import annotations

import math
from typing import Any


def final(record: dict[str, Any], key: str) -> float:
    """``key`` of the last round, nan where the run did not report it."""
    value = record["rounds"][-1].get(key)
    return math.nan if value is None else float(value)


def is_job(record: dict[str, Any], method: str, adversary: str, fraction: float) -> bool:
    """Whether ``record`` is the run of ``method`` under ``adversary`` at ``fraction``."""
    job = record["job"]
    return job["method"] == method and job["adversary"] == adversary and float(job["fraction"]) == fraction
