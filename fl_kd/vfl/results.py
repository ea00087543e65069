"""The results of one vertical-FL run, built in one place for every runtime.

The in-process loop (:func:`fl_kd.vfl.run_vfl`) and the Flower server (:class:`fl_kd.strategies.vfl.VFLServer`)
both end in :func:`build_results`, so ``results.json`` has the same keys whichever backend trained, and the two can
be compared key by key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_kd.config import to_mapping
from fl_kd.vfl.metrics import worst_case_ap

if TYPE_CHECKING:
    from fl_kd.vfl.config import VFLRunConfig
    from fl_kd.vfl.trainer import TrainingHistory


def build_results(
    config: VFLRunConfig,
    history: TrainingHistory,
    metrics: Mapping[str, Any],
    attacks: Mapping[str, Any],
    num_train: int,
    seconds: float,
    exchanges: int | None = None,
    rejected_replies: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One run's results.

    Parameters
    ----------
    config : VFLRunConfig
        The run.
    history : TrainingHistory
        Losses, skipped batches, refused gradients, epoch times and evaluations of training.
    metrics : Mapping[str, Any]
        Final main-task performance (:func:`fl_kd.vfl.trainer.prediction_metrics`): ``accuracy``,
        ``num_samples`` and, for two classes, ``auc``.
    attacks : Mapping[str, Any]
        Each attack's result (:func:`fl_kd.vfl.attacks.score_attacks`).
    num_train : int
        Aligned training samples.
    seconds : float
        Wall time of the whole run.
    exchanges : int | None (default: None)
        Rounds of messages (None in-process, where no message is sent).
    rejected_replies : Mapping[str, int] | None (default: None)
        Replies the Flower server refused before any party used them, by reason (none in-process).

    Returns
    -------
    dict[str, Any]
        ``mp`` (main-task test accuracy), the ``metrics``, ``train_loss`` per epoch, ``skipped_batches`` and
        ``failed_updates`` (counts) with their details in ``skipped`` and ``failed``, ``attacks`` with the worst case
        over them (``ap_worst_case``, ``ap_worst_case_attack``: :func:`fl_kd.vfl.metrics.worst_case_ap`), ``num_train``,
        ``epoch_seconds``, ``train_seconds``, ``evaluations``, ``exchanges``, ``rejected_replies``, ``seconds`` and
        the ``config``.
    """
    return {
        "mp": float(metrics["accuracy"]),
        **metrics,
        "train_loss": list(history.epoch_losses),
        "skipped_batches": len(history.skipped_batches),
        "failed_updates": len(history.failed_updates),
        "skipped": list(history.skipped_batches),
        "failed": list(history.failed_updates),
        "attacks": dict(attacks),
        **worst_case_ap(attacks),
        "num_train": num_train,
        "epoch_seconds": list(history.epoch_seconds),
        "train_seconds": float(sum(history.epoch_seconds)),
        "evaluations": list(history.evaluations),
        "exchanges": exchanges,
        "rejected_replies": dict(rejected_replies or {}),
        "seconds": seconds,
        "config": to_mapping(config),
    }


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so the file is strict JSON."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(path: Path, results: Mapping[str, Any]) -> None:
    """Write the results as indented, strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(results), indent=2))


def progress_writer(path: Path) -> Callable[[Mapping[str, Any]], None]:
    """A report hook that appends each epoch's row to ``path`` as one JSON line (the file starts empty).

    Both runtimes write it into the run folder as training goes, so a console, or a person, can follow a run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def report(row: Mapping[str, Any]) -> None:
        with path.open("a") as stream:
            stream.write(json.dumps(json_safe(row)) + "\n")

    return report
