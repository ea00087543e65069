"""What a round costs each device: training FLOPs, bytes up and down, and simulated seconds from its tier.

Heterogeneous devices differ in model size, compute speed and bandwidth. Every strategy reports, per round and per
device tier, the mean cost of a sampled client, and the round's simulated time is that of its slowest sampled
client (a synchronous round waits for the last answer), so a user sees what, say, FedAvg of the large server model
would ask of a slow device compared with distillation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fl_kd.kd.metrics import Metrics
from fl_kd.models import DeviceTier, build_model, count_flops, simulated_seconds

#: A training step costs about three forward passes (forward, and backward through activations and weights).
TRAIN_PASS_FACTOR = 3


@dataclass
class ClientCost:
    """One sampled client's work in one round."""

    train_samples: float = 0.0
    uplink_bytes: int = 0
    downlink_bytes: int = 0


@functools.lru_cache(maxsize=64)
def training_flops_per_sample(model: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """FLOPs of one training step on one sample of ``model`` (``TRAIN_PASS_FACTOR`` forward passes)."""
    return TRAIN_PASS_FACTOR * count_flops(build_model(model, input_shape, num_classes, seed=0), input_shape)


def cost_metrics(
    costs: Mapping[int, ClientCost],
    tiers: Sequence[DeviceTier],
    input_shape: tuple[int, ...],
    num_classes: int,
    model_of: Mapping[int, str | None] | None = None,
) -> Metrics:
    """Per-tier means over the sampled clients and the round's simulated seconds.

    Parameters
    ----------
    costs : Mapping[int, ClientCost]
        Client id -> its work this round (sampled clients only).
    tiers : Sequence[DeviceTier]
        Device tier of every client, by client id.
    input_shape, num_classes
        Of the dataset, to count FLOPs.
    model_of : Mapping[int, str | None] | None (default: None)
        The model a client trains when it is not its tier's (FedAvg of the server model trains the server's);
        None or a missing id means the tier's.

    Returns
    -------
    dict
        ``client_flops_<tier>``, ``client_uplink_bytes_<tier>``, ``client_downlink_bytes_<tier>`` and, where the
        tier declares ``compute_speed`` and ``bandwidth_mbps``, ``sim_seconds_<tier>``; ``sim_seconds`` is the
        slowest sampled client's (absent when no sampled tier declares both).
    """
    metrics: Metrics = {}
    slowest: list[float] = []
    for tier_name in sorted({tiers[cid].name for cid in costs}):
        members = [cid for cid in sorted(costs) if tiers[cid].name == tier_name]
        flops, seconds = [], []
        for cid in members:
            model = (model_of or {}).get(cid) or tiers[cid].model
            flops.append(costs[cid].train_samples * training_flops_per_sample(model, input_shape, num_classes))
            payload = costs[cid].uplink_bytes + costs[cid].downlink_bytes
            # simulated_seconds models training time from samples x epochs; the FLOP ratio to the tier's own model
            # scales it when a client trains a larger model than its tier's.
            scale = training_flops_per_sample(model, input_shape, num_classes) / training_flops_per_sample(
                tiers[cid].model, input_shape, num_classes
            )
            sim = simulated_seconds(tiers[cid], round(costs[cid].train_samples * scale), 1, payload)
            if sim is not None:
                seconds.append(sim)
        metrics[f"client_flops_{tier_name}"] = math.fsum(flops) / len(members)
        metrics[f"client_uplink_bytes_{tier_name}"] = sum(costs[c].uplink_bytes for c in members) / len(members)
        metrics[f"client_downlink_bytes_{tier_name}"] = sum(costs[c].downlink_bytes for c in members) / len(members)
        if len(seconds) == len(members):
            metrics[f"sim_seconds_{tier_name}"] = math.fsum(seconds) / len(members)
        slowest.extend(seconds)
    if slowest:
        metrics["sim_seconds"] = max(slowest)
    return metrics
