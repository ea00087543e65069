"""Per-round metrics of KD strategies, shared by the reference runners and the Flower strategies.

Both runtimes build their metric dicts with these functions, so the keys (flat, snake_case, ready for a Flower
``MetricRecord`` or a CSV row) and the arithmetic behind them cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Metrics = dict[str, float | int]


def accuracy_summary(accuracies: Mapping[int, float], tiers: Mapping[int, str], prefix: str) -> Metrics:
    """Mean, min and max of per-client accuracies, overall and per device tier.

    Parameters
    ----------
    accuracies : Mapping[int, float]
        Client id -> accuracy in ``[0, 1]``; only these clients are summarised.
    tiers : Mapping[int, str]
        Client id -> tier name (must cover every id in ``accuracies``).
    prefix : str
        Key prefix, e.g. ``"client_acc"`` gives ``client_acc_mean`` and ``client_acc_low_mean``.

    Returns
    -------
    dict[str, float]
        ``{prefix}_{mean,min,max}`` and ``{prefix}_{tier}_{mean,min,max}`` for each tier present, tiers sorted
        by name so the key order is stable.
    """
    if not accuracies:
        return {}
    missing = sorted(set(accuracies) - set(tiers))
    if missing:
        raise ValueError(f"no tier given for clients {missing}")
    metrics: Metrics = _stats(prefix, list(accuracies.values()))
    for tier in sorted({tiers[client_id] for client_id in accuracies}):
        values = [acc for client_id, acc in sorted(accuracies.items()) if tiers[client_id] == tier]
        metrics |= _stats(f"{prefix}_{tier}", values)
    return metrics


def _stats(prefix: str, values: list[float]) -> Metrics:
    return {
        f"{prefix}_mean": math.fsum(values) / len(values),
        f"{prefix}_min": min(values),
        f"{prefix}_max": max(values),
    }


def uplink_nbytes(client_logits: Mapping[int, tuple[NDArray[Any], NDArray[Any]]]) -> int:
    """Bytes the clients send: for each answer, ``positions.nbytes + logits.nbytes``."""
    return int(sum(np.asarray(pos).nbytes + np.asarray(logits).nbytes for pos, logits in client_logits.values()))


def downlink_nbytes(query: NDArray[Any], server_logits: NDArray[Any], num_receivers: int) -> int:
    """Bytes the server sends: the query positions and its transfer-set logits, once per selected client."""
    return (int(np.asarray(query).nbytes) + int(np.asarray(server_logits).nbytes)) * int(num_receivers)


def round_metrics(
    round: int,
    server_acc: float,
    client_acc: Mapping[int, float],
    client_pacc: Mapping[int, float],
    tiers: Mapping[int, str],
    server_stats: Mapping[str, float | int],
    uplink_bytes: int,
    downlink_bytes: int,
    wall_seconds: float,
    n_rejected: int = 0,
    n_eval_dropped: int = 0,
    n_missing: int = 0,
    cost: Mapping[str, float | int] | None = None,
    server_acc_subset: float | None = None,
) -> Metrics:
    """The flat metric dict of one round.

    Parameters
    ----------
    round : int
        Federated round (1-based).
    server_acc : float
        Server accuracy on the global test set.
    client_acc, client_pacc : Mapping[int, float]
        Client id -> accuracy on the global test set / on its personalised test set.
    tiers : Mapping[int, str]
        Client id -> device tier name.
    server_stats : Mapping[str, float | int]
        The strategy's own figures of the round's server step (FedGEMS: where each sample's knowledge came
        from, cache size, server loss), in the order they should appear.
    uplink_bytes, downlink_bytes : int
        Logits payloads of the round (see :func:`uplink_nbytes`, :func:`downlink_nbytes`).
    wall_seconds : float
        Wall-clock time of the round.
    n_rejected, n_missing : int (default: 0)
        Client answers dropped by screening, and selected clients that did not answer.
    n_eval_dropped : int (default: 0)
        Clients of the evaluate phase left out of its figures: a sampled client that failed to take in the server's
        knowledge (both runtimes) and, over Flower, a reply to no message of the round's, a repeated one, or one
        whose accuracies are missing or outside [0, 1].
    cost : Mapping | None (default: None)
        Device cost of the round (:func:`fl_kd.kd.cost.cost_metrics`), appended as they are.
    server_acc_subset : float | None (default: None)
        The last round's server accuracy on the test subset of the rounds before it (``server_acc_subset``).

    Returns
    -------
    dict[str, float | int]
        ``round, server_acc, client_acc_*, client_pacc_*, uplink_bytes, downlink_bytes, n_self, n_cache,
        n_clients, n_ce_only, num_answered, cache_size, server_loss, n_rejected, n_missing, n_eval_dropped,
        wall_seconds``.
    """
    metrics: Metrics = {"round": int(round), "server_acc": float(server_acc)}
    if server_acc_subset is not None:
        metrics["server_acc_subset"] = float(server_acc_subset)
    metrics |= accuracy_summary(client_acc, tiers, "client_acc")
    metrics |= accuracy_summary(client_pacc, tiers, "client_pacc")
    metrics |= {
        "uplink_bytes": int(uplink_bytes),
        "downlink_bytes": int(downlink_bytes),
        **server_stats,
        "n_rejected": int(n_rejected),
        "n_missing": int(n_missing),
        "n_eval_dropped": int(n_eval_dropped),
        "wall_seconds": float(wall_seconds),
    }
    return metrics | dict(cost or {})


def server_trend(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The server's accuracy per round on one test set, so that a best round compares like with like.

    Rounds before the last are scored on a fixed test subset where ``evaluation.test_samples`` asks for one, and the
    last on the whole test set; the last also reports its figure on the subset (``server_acc_subset``), which then
    stands in for it here. A missing figure (an algorithm without a server model; ``None`` read back from JSON) is
    NaN.
    """
    trend = [_finite_or_nan(row.get("server_acc")) for row in rows]
    if rows and rows[-1].get("server_acc_subset") is not None:
        trend[-1] = _finite_or_nan(rows[-1]["server_acc_subset"])
    return trend


def _finite_or_nan(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan
