"""Which node holds which VFL role, as the deployment registered them (run config ``node-roles``).

A VFL node names its role in its discovery reply, from its ``node_config`` (:func:`fl_kd.vfl.protocol.party_role`).
Two feature parties could swap their party ids, or one could claim the label party, and the run would go on with
columns, labels or the attacker's seat in the wrong place. With ``node-roles`` the ServerApp knows each role's node
from the registration (:mod:`fl_kd.pinned_nodes`) and stops at discovery, naming the node, when a claim disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping

from fl_kd.pinned_nodes import encode_pinned_nodes, pinned_nodes
from fl_kd.vfl.protocol import FEATURE, LABEL, PartyRole

#: Run config key: the node id of feature party ``0..K-1``, then the label party's, comma-separated.
NODE_ROLES_KEY = "node-roles"


def roles_in_order(num_feature_parties: int) -> list[PartyRole]:
    """The roles of a run in the order ``node-roles`` lists their nodes: feature parties, then the label party."""
    return [PartyRole(FEATURE, k) for k in range(num_feature_parties)] + [PartyRole(LABEL, -1)]


def describe(role: PartyRole) -> str:
    """``the label party`` or ``feature party k``, for messages."""
    return "the label party" if role.is_label else f"feature party {role.party_id}"


def encode_node_roles(feature_nodes: list[int], label_node: int) -> str:
    """The ``node-roles`` value for these feature parties' nodes (in party order) and the label party's node."""
    return encode_pinned_nodes([*feature_nodes, label_node])


def node_roles(run_config: Mapping[str, object], num_feature_parties: int) -> dict[int, PartyRole] | None:
    """Node id -> its registered role; None when the deployment pinned none (simulation, no node authentication).

    Raises
    ------
    fl_kd.config.ConfigError
        The value is not ``num_feature_parties + 1`` distinct whole node ids.
    """
    roles = roles_in_order(num_feature_parties)
    node_ids = pinned_nodes(run_config, NODE_ROLES_KEY, [describe(role) for role in roles])
    return None if node_ids is None else dict(zip(node_ids, roles, strict=True))
