"""A VFL node's role comes from the deployment's registration when it has one: a claim that disagrees stops the run
at discovery, naming the node, before any columns, labels or the attacker's seat are handed out (identity from
Flower's metadata)."""

from __future__ import annotations

import pytest

from fl_kd.clients.vfl_app import app as client_app
from fl_kd.config import ConfigError, from_mapping
from fl_kd.strategies.vfl import VFLServer
from fl_kd.strategies.vfl_exchange import Messenger
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.node_roles import NODE_ROLES_KEY, encode_node_roles, node_roles
from fl_kd.vfl.protocol import PartyRole
from tests.flower_loopback import LoopbackGrid

NODES = [1000, 1007, 1014]  # LoopbackGrid gives partition p the node id 1000 + 7 p
REGISTERED = {1000: PartyRole(vp.FEATURE, 0), 1007: PartyRole(vp.FEATURE, 1), 1014: PartyRole(vp.LABEL, -1)}


def _config() -> VFLRunConfig:
    training = {"epochs": 1, "batch_size": 16}
    return from_mapping(
        VFLRunConfig,
        {"seed": 3, "attack": {}, "training": training, "vfl_split": {"scheme": "blocks", "num_parties": 3}},
    )


def _grid(cfg: VFLRunConfig, swapped: bool) -> LoopbackGrid:
    """Three nodes that say their roles; with ``swapped`` the two feature parties trade party ids."""
    ids = (1, 0) if swapped else (0, 1)
    node_configs: list[dict[str, str | int]] = [
        {vp.ROLE: vp.FEATURE, vp.PARTY_ID: ids[0]},
        {vp.ROLE: vp.FEATURE, vp.PARTY_ID: ids[1]},
        {vp.ROLE: vp.LABEL},
    ]
    return LoopbackGrid(client_app, 3, {vp.CONFIG_KEY: vp.encode_config(cfg)}, node_configs=node_configs)


def test_the_run_config_value_round_trips_and_bad_values_are_refused() -> None:
    assert node_roles({}, 2) is None and node_roles({NODE_ROLES_KEY: ""}, 2) is None
    text = encode_node_roles([1000, 1007], 1014)
    assert text == "1000,1007,1014"
    assert node_roles({NODE_ROLES_KEY: text}, 2) == REGISTERED
    for bad, reason in (
        ("1000,1007", "must list 3 node ids"),
        ("1000,1007,label", "must list 3 node ids"),
        ("1000,1007,1000", "names one node twice"),
    ):
        with pytest.raises(ConfigError, match=reason):
            node_roles({NODE_ROLES_KEY: bad}, 2)


@pytest.mark.parametrize("pinned", [False, True])
def test_feature_parties_that_swap_their_ids_are_stopped_when_the_roles_are_registered(pinned: bool) -> None:
    cfg = _config()
    server = VFLServer(cfg, node_roles=REGISTERED if pinned else None)
    messenger = Messenger(_grid(cfg, swapped=True), 60.0)
    if pinned:
        with pytest.raises(
            RuntimeError, match="node 1000 claims feature party 1, but the deployment registered it as feature party 0"
        ):
            server.discover(messenger)
    else:  # what pinning prevents: the swap goes through, each node serving the other's columns
        server.discover(messenger)
        assert [party.node_id for party in server.features] == [1007, 1000]


def test_honest_registered_parties_are_discovered_and_an_unregistered_node_is_named() -> None:
    cfg = _config()
    server = VFLServer(cfg, node_roles=REGISTERED)
    server.discover(Messenger(_grid(cfg, swapped=False), 60.0))
    assert [party.node_id for party in server.features] == [1000, 1007] and server.label.node_id == 1014
    stranger = VFLServer(cfg, node_roles={1000: REGISTERED[1000], 1007: REGISTERED[1007], 99: REGISTERED[1014]})
    with pytest.raises(RuntimeError, match="node 1014 is not one the deployment registered"):
        stranger.discover(Messenger(_grid(cfg, swapped=False), 60.0))
