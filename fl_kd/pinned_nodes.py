"""Node ids a deployment registered for each place of a run, passed in the run config: identity from the metadata.

A node says who it is (its partition, its VFL role) in its first reply, from its ``node_config``, which only the
ClientApp sees; any registered node could claim any place. Where SuperNodes authenticate, whoever registers them
learns the node id Flower gives each and passes the ids to the ServerApp as one run config value, place by place.
The ServerApp then checks every claim against Flower's metadata, and the payload only confirms it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fl_kd.config import ConfigError


def encode_pinned_nodes(node_ids: Sequence[int]) -> str:
    """The run config value for places ``0..len(node_ids)-1`` held by ``node_ids``, in that order."""
    return ",".join(str(int(node_id)) for node_id in node_ids)


def pinned_nodes(run_config: Mapping[str, object], key: str, places: Sequence[str]) -> list[int] | None:
    """The node id of each of ``places`` (their names, for the error) from run config ``key``; None when unset.

    Raises
    ------
    ConfigError
        The value is not ``len(places)`` distinct whole node ids, comma-separated.
    """
    text = run_config.get(key)
    if text is None or text == "":
        return None
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != len(places) or not all(part.isascii() and part.isdecimal() for part in parts):
        shown = ", ".join(places[:3]) + (", ..." if len(places) > 3 else "")
        raise ConfigError(f"{key} must list {len(places)} node ids, comma-separated ({shown}); got {str(text)[:80]!r}")
    node_ids = [int(part) for part in parts]
    if len(set(node_ids)) != len(node_ids):
        raise ConfigError(f"{key} names one node twice: {str(text)[:80]!r}")
    return node_ids
