"""Which node holds which partition, as the deployment registered them: a client's identity from Flower's metadata.

A node names its partition in its hello reply (from its ``node_config``, which only the ClientApp sees), so any node
could claim any free partition. Where SuperNodes authenticate, the launcher registers each partition's key and learns
the node id Flower gives it; it passes that map to the ServerApp under :data:`NODE_PARTITIONS_KEY`, and the server
refuses a claim that disagrees with it. The payload then only confirms what the metadata already says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fl_kd.pinned_nodes import encode_pinned_nodes, pinned_nodes

#: Run config key: partition ``i``'s node id at place ``i``, comma-separated (a string: run config values are scalars).
NODE_PARTITIONS_KEY = "node-partitions"


def encode_node_partitions(node_ids: Sequence[int]) -> str:
    """The run config value for partitions ``0..len(node_ids)-1`` held by ``node_ids``, in that order."""
    return encode_pinned_nodes(node_ids)


def node_partitions(run_config: Mapping[str, object], num_clients: int) -> dict[int, int] | None:
    """Node id -> partition from the run config; None when the deployment pinned none (simulation, no auth).

    Raises
    ------
    fl_kd.config.ConfigError
        The value is not ``num_clients`` distinct whole node ids.
    """
    node_ids = pinned_nodes(run_config, NODE_PARTITIONS_KEY, [f"partition {p}" for p in range(num_clients)])
    return None if node_ids is None else {node_id: partition for partition, node_id in enumerate(node_ids)}
