"""The VFL ClientApp keeps its live parties between messages: same results as rebuilding them, never a stale one.

A simulation hands a node's messages to whichever worker process is free, so a message may find the party it needs
alive in its process or have to rebuild it from ``context.state``; either way the run must be the in-process one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from flwr.app import Context, Message

from fl_kd.clients import vfl_party
from fl_kd.clients.vfl_app import app as client_app
from fl_kd.clients.vfl_party import load_party, node_of, save_party, take_party
from fl_kd.strategies.vfl import VFLServer
from fl_kd.vfl import run_vfl
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.protocol import CONFIG_KEY, encode_config
from tests.flower_loopback import LoopbackGrid
from tests.test_vfl_flower import _assert_same_state, _flower_states, vfl_config


class ForgetfulGrid(LoopbackGrid):
    """Drops the live parties of this process before the messages ``forget(index)`` picks (counted from 0)."""

    def __init__(self, cfg: VFLRunConfig, forget: Callable[[int], bool]) -> None:
        super().__init__(client_app, cfg.num_feature_parties + 1, {CONFIG_KEY: encode_config(cfg)})
        self.forget = forget
        self.delivered = 0

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies: list[Message] = []
        for message in messages:
            if self.forget(self.delivered):
                vfl_party._LIVE.clear()
            self.delivered += 1
            replies.extend(super().send_and_receive([message], timeout=timeout))
        return replies


SCHEDULES: dict[str, Callable[[int], bool]] = {
    "live parties kept": lambda index: False,
    "rebuilt for every message": lambda index: True,
    "rebuilt for every other message": lambda index: index % 2 == 1,  # two workers taking turns
    "rebuilt now and then": lambda index: index % 7 in (2, 3),
}
CONFIGS = {
    "CoAE with noise, one batch per message": vfl_config(
        {"direct_label_inference": {}, "norm_scoring": {}},
        defence={"name": "coae_noise", "params": {"scale": 0.005, "epochs": 1, "num_train": 30_000}},
    ),
    "Gaussian noise, three batches per message": vfl_config(
        {"direct_label_inference": {}},
        defence={"name": "gaussian", "params": {"scale": 0.01}},
        training={"batches_per_message": 3},
    ),
    "Gaussian noise, party state in context.state": vfl_config(
        {"direct_label_inference": {}},
        defence={"name": "gaussian", "params": {"scale": 0.01}},
        training={"party_state": "context"},
    ),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_live_or_rebuilt_parties_train_exactly_as_in_process(config: str) -> None:
    cfg = CONFIGS[config]
    reference = run_vfl(cfg)
    states = []
    for forget in SCHEDULES.values():
        vfl_party._LIVE.clear()
        grid = ForgetfulGrid(cfg, forget)
        results = VFLServer(cfg).run(grid)
        for key in ("mp", "auc", "train_loss", "attacks"):
            assert results[key] == reference[key], key
        states.append(_flower_states(grid, cfg.num_feature_parties))
    for other in states[1:]:
        _assert_same_state(states[0], other)


def _trained_context() -> Context:
    """A feature party's context after a short run, its live party kept in this process."""
    cfg = vfl_config(training={"epochs": 1})
    grid = LoopbackGrid(client_app, cfg.num_feature_parties + 1, {CONFIG_KEY: encode_config(cfg)})
    VFLServer(cfg).run(grid)
    return next(c for c in grid.contexts.values() if not node_of(c).role.is_label)


def test_the_live_party_serves_only_the_state_it_saved() -> None:
    context = _trained_context()
    node = node_of(context)
    party = take_party(context, node)
    save_party(context, party)
    assert take_party(context, node) is party  # the state is this party's last save

    save_party(context, party)
    older = dict(vfl_party.record(context.state, vfl_party.PARTY_STATE))
    party.embed([0, 1, 2])  # the live party moves on and saves...
    save_party(context, party)
    context.state[vfl_party.PARTY_STATE] = vfl_party.ConfigRecord({**older, "token": "another save"})
    rebuilt = take_party(context, node)  # ...but this message carries an older state: it is rebuilt from it
    assert rebuilt is not party
    _assert_same_state(rebuilt.state_dict(), load_party(context, node).state_dict())
    assert rebuilt.state_dict()["step"] == party.state_dict()["step"] - 1


def test_a_failed_handler_leaves_no_live_party_behind() -> None:
    context = _trained_context()
    node = node_of(context)
    taken = take_party(context, node)
    taken.embed([0, 1, 2])  # a handler that fails here never saves
    again = take_party(context, node)
    assert again is not taken
    assert again.state_dict()["step"] == taken.state_dict()["step"] - 1  # the saved state, without the failed step


def test_a_packed_state_comes_back_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(4)
    state = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 4, generator=generator).t()}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0], "amsgrad": False, "eps": 1e-8}],
        },
        "defence": [torch.tensor([True, False]), torch.zeros(0, 3), torch.arange(5, dtype=torch.int64)],
        "defence_state": {"generator": generator.get_state(), "draws": torch.rand(2, dtype=torch.float64)},
        "step": 12,
        "nothing": None,
    }
    back = vfl_party._unpack(*vfl_party._pack(state))
    _assert_same_state(back, state)
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert [t.dtype for t in back["defence"]] == [torch.bool, torch.float32, torch.int64]


def alignment_on_node(context: Context) -> bool:
    """The alignment is a token in ``context.state``, its positions a file on the node."""
    return vfl_party.ALIGNMENT not in context.state.array_records and bool(
        vfl_party.record(context.state, vfl_party.ALIGNMENT).get("on-node")
    )


def test_a_party_kept_on_the_node_leaves_only_its_token_in_the_context() -> None:
    """``training.party_state=node``: the save is a file, two saves are kept, a stale token is served, a lost one
    is a clear error."""
    context = _trained_context()  # the default keeps parties on the node
    node = node_of(context)
    entries = dict(vfl_party.record(context.state, vfl_party.PARTY_STATE))
    assert set(entries) == {"token", "on-node"}
    assert not any(key.startswith(vfl_party.MODEL_PREFIX) for key in context.state)
    folder = vfl_party.node_state_folder(context)
    names = [path.name for path in folder.glob("*.state")]
    assert f"{entries['token']}.state" in names and len(names) <= 2  # the last save and the one before
    assert alignment_on_node(context) and len(list(folder.glob("alignment-*.npz"))) == 1

    party = take_party(context, node)
    save_party(context, party, on_node=True)
    older = dict(vfl_party.record(context.state, vfl_party.PARTY_STATE))
    party.embed([0, 1, 2])
    save_party(context, party, on_node=True)
    assert sorted(p.stem for p in folder.glob("*.state")) == sorted([older["token"], vfl_party.record(
        context.state, vfl_party.PARTY_STATE)["token"]])  # fmt: skip
    # A message whose context still names the save before (its handler failed after writing) rebuilds from it.
    context.state[vfl_party.PARTY_STATE] = vfl_party.ConfigRecord(older)
    rebuilt = take_party(context, node)
    assert rebuilt is not party and rebuilt.state_dict()["step"] == party.state_dict()["step"] - 1
    # Both ways of keeping the party give the same party.
    save_party(context, rebuilt, on_node=False)
    _assert_same_state(load_party(context, node).state_dict(), rebuilt.state_dict())
    # A save that is gone from the node is an error that says so, not a fresh party.
    context.state[vfl_party.PARTY_STATE] = vfl_party.ConfigRecord({"token": "gone", "on-node": True})
    vfl_party._LIVE.clear()
    with pytest.raises(RuntimeError, match="gone from the node"):
        take_party(context, node)


def test_setup_removes_the_node_folders_of_runs_untouched_for_a_day(tmp_path: Any, monkeypatch: Any) -> None:
    import os
    import time

    monkeypatch.setattr(vfl_party, "NODE_STATE_ROOT", tmp_path)
    old, recent = tmp_path / "run-987654321" / "node-5", tmp_path / "run-987654322" / "node-5"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "x.state").write_bytes(b"0")
    day_ago = time.time() - vfl_party.STALE_SECONDS - 60
    os.utime(old / "x.state", (day_ago, day_ago))
    context = _trained_context()  # its setup runs under tmp_path
    assert not old.parent.exists() and (recent / "x.state").exists()
    assert vfl_party.node_state_folder(context).is_dir()


def test_a_nodes_state_folder_is_its_users_alone(tmp_path: Any, monkeypatch: Any) -> None:
    """The label party's models and defence state sit in a shared temporary folder; they were world-readable."""
    import stat

    monkeypatch.setattr(vfl_party, "NODE_STATE_ROOT", tmp_path)
    context = _trained_context()
    folder = vfl_party.node_state_folder(context)
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0 and any(folder.iterdir())
