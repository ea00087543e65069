"""What every KD strategy's reference runner shares: the run result, client evaluation and the run summary.

Each algorithm's in-process runner (``fl_kd/kd/<name>/runner.py``) drives its parties with these, and the Flower
strategies report through the same :func:`summarise`, so run folders look alike whatever produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fl_kd.kd.client import DistillClient
from fl_kd.kd.federation import Federation
from fl_kd.kd.metrics import Metrics


@dataclass
class RunResult:
    """Metrics of a run.

    Attributes
    ----------
    rounds : list[dict[str, float | int]]
        One flat metric dict per round (see :func:`fl_kd.kd.metrics.round_metrics`).
    summary : dict[str, float | int]
        Final and best server accuracy, final client accuracies, total traffic and wall time.
    """

    rounds: list[Metrics] = field(default_factory=list)
    summary: Metrics = field(default_factory=dict)


def evaluate_clients(
    federation: Federation, clients: list[DistillClient]
) -> tuple[dict[int, float], dict[int, float]]:
    """Each client's accuracy on the global test set and on its personalised test set, by client id."""
    data = federation.data
    client_acc = {client.client_id: client.evaluate(data.x_test, data.y_test) for client in clients}
    client_pacc = {
        client.client_id: client.evaluate(*federation.personalised_test(client.client_id)) for client in clients
    }
    return client_acc, client_pacc


def summarise(rounds: list[Metrics], wall_seconds: float) -> Metrics:
    """Summary of a run's per-round metrics (shared with the Flower strategy's final report)."""
    summary: Metrics = {"rounds": len(rounds), "wall_seconds": float(wall_seconds)}
    if not rounds:
        return summary
    last = rounds[-1]
    summary |= {
        "final_server_acc": last["server_acc"],
        "best_server_acc": max(r["server_acc"] for r in rounds),
        "final_client_acc_mean": last.get("client_acc_mean", float("nan")),
        "final_client_pacc_mean": last.get("client_pacc_mean", float("nan")),
        "total_uplink_bytes": int(sum(r["uplink_bytes"] for r in rounds)),
        "total_downlink_bytes": int(sum(r["downlink_bytes"] for r in rounds)),
    }
    return summary
