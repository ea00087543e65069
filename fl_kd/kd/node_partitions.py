"""Which node holds which partition, as the deployment registered them: a client's identity from Flower's metadata.

A node names its partition in its hello reply (from its ``node_config``, which only the ClientApp sees), so any node
could claim any free partition. Where SuperNodes authenticate, the launcher registers each partition's key and learns
the node id Flower gives it; it passes that map to the ServerApp under :data:`NODE_PARTITIONS_KEY`, and the server
refuses a claim that disagrees with it. The payload then only confirms what the metadata already says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fl_kd.config import ConfigError

#: Run config key: partition ``i``'s node id at place ``i``, comma-separated (a string: run config values are scalars).
NODE_PARTITIONS_KEY = "node-partitions"


def encode_node_partitions(node_ids: Sequence[int]) -> str:
    """The run config value for partitions ``0..len(node_ids)-1`` held by ``node_ids``, in that order."""
    return ",".join(str(int(node_id)) for node_id in node_ids)


def node_partitions(run_config: Mapping[str, object], num_clients: int) -> dict[int, int] | None:
    """Node id -> partition from the run config; None when the deployment pinned none (simulation, no auth).

    Raises
    ------
    ConfigError
        The value is not ``num_clients`` distinct whole node ids.
    """
    text = run_config.get(NODE_PARTITIONS_KEY)
    if text is None or text == "":
        return None
    parts = str(text).split(",")
    if len(parts) != num_clients or not all(part.strip().isascii() and part.strip().isdecimal() for part in parts):
        raise ConfigError(
            f"{NODE_PARTITIONS_KEY} must list the node id of each of the {num_clients} partitions, comma-separated; "
            f"got {str(text)[:80]!r}"
        )
    node_ids = [int(part) for part in parts]
    if len(set(node_ids)) != len(node_ids):
        raise ConfigError(f"{NODE_PARTITIONS_KEY} names a node for two partitions: {str(text)[:80]!r}")
    return {node_id: partition for partition, node_id in enumerate(node_ids)}
