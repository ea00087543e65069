"""A checkpoint a user points to fails with one clear CheckpointError, and a bad one never half-loads a server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fl_kd.checkpoint import CheckpointError
from fl_kd.kd.federation import build_federation
from fl_kd.kd.fedgems.parties import build_server
from fl_kd.models import build_model
from tests.kd_configs import tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config()
    path = tmp_path_factory.mktemp("ckpt") / "server.pt"
    build_server(cfg, build_federation(cfg)).save(path)
    return path


def _server():  # noqa: ANN202
    cfg = tiny_config()
    return build_server(cfg, build_federation(cfg))


def _weights(server) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {key: value.clone() for key, value in server.model.state_dict().items()}


def test_a_good_checkpoint_round_trips(saved: Path) -> None:
    server = build_server(tiny_config(checkpoint=str(saved)), build_federation(tiny_config()))
    reference = torch.load(saved, weights_only=True)["model"]
    assert all(torch.equal(server.model.state_dict()[key], value) for key, value in reference.items())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path, good: path.write_bytes(good.read_bytes()[:100]), "not a readable torch checkpoint"),
        (lambda path, good: path.write_bytes(b""), "not a readable torch checkpoint"),
        (lambda path, good: path.write_text("hello"), "not a readable torch checkpoint"),
        (
            lambda path, good: torch.save(build_model("resnet_server", (1, 8, 8), 10, seed=0).state_dict(), path),
            "another architecture",
        ),
        (
            lambda path, good: torch.save(build_model("cnn_small", (1, 8, 8), 7, seed=0).state_dict(), path),
            "has shape",
        ),
        (lambda path, good: torch.save(_with_nan(good), path), "NaN or inf"),
        # A sparse weight failed the finiteness check with NotImplementedError; integer weights loaded silently.
        (lambda path, good: torch.save(_changed(good, lambda w: w.to_sparse()), path), "a torch.sparse_coo tensor"),
        (lambda path, good: torch.save(_changed(good, lambda w: (w * 1000).long()), path), "of torch.int64, the"),
        (lambda path, good: torch.save({"model": {"w": 1}}, path), "no model state_dict"),
    ],
)
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # torch's note on loading the sparse one
def test_bad_checkpoints_name_the_file_and_leave_the_server_untouched(
    tmp_path: Path,
    saved: Path,
    make,
    message: str,  # noqa: ANN001
) -> None:
    bad = tmp_path / "bad.pt"
    make(bad, saved)
    server = _server()
    before = _weights(server)
    with pytest.raises(CheckpointError, match=message) as info:
        server.load(bad)
    assert str(bad) in str(info.value)
    assert all(torch.equal(server.model.state_dict()[key], value) for key, value in before.items())


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        _server().load(tmp_path / "nope.pt")


def _with_nan(good: Path) -> dict:
    checkpoint = torch.load(good, weights_only=True)
    key = next(iter(checkpoint["model"]))
    checkpoint["model"][key] = torch.full_like(checkpoint["model"][key], float("nan"))
    return checkpoint


def test_a_resumed_server_refuses_saved_weights_with_nan() -> None:
    """The generic walk behind a resume loaded a diverged model's weights as they were."""
    from fl_kd.checkpoint import object_state, restore_object_state

    state = object_state(_server())

    def spoil(node: object) -> bool:
        if isinstance(node, dict) and node.get("t") == "module":
            name = next(key for key, value in node["v"].items() if value.is_floating_point())
            node["v"][name] = torch.full_like(node["v"][name], float("nan"))
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
        return any(spoil(child) for child in children)

    assert spoil(state)
    with pytest.raises(CheckpointError, match="hold NaN or inf"):
        restore_object_state(_server(), state, "saved")


class _State:
    """A small piece of server state as the generic walk meets it."""

    def __init__(self) -> None:
        self.rounds_done: float = 3
        self.mode = "learned"
        self.cache = torch.zeros(4, dtype=torch.float32)
        self.seen = np.zeros(2, dtype=np.int64)
        self.best: float | None = None


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("rounds_done", "3", "rounds_done was a str"),
        ("mode", 2, "mode was a number"),
        ("rounds_done", True, "rounds_done was a truth value"),
        ("cache", torch.zeros(4, dtype=torch.float64), "cache was a torch.float64 tensor"),
        ("seen", np.zeros(2, dtype=np.float32), "seen was a float32 array"),
    ],
)
def test_a_saved_value_of_another_kind_than_the_rebuilt_one_is_refused(
    attribute: str, value: object, reason: str
) -> None:
    """The walk let a saved value of any type replace the rebuilt one: the run failed later, far from the cause."""
    from fl_kd.checkpoint import object_state, restore_object_state

    saved = _State()
    setattr(saved, attribute, value)
    with pytest.raises(CheckpointError, match=reason):
        restore_object_state(_State(), object_state(saved), "saved")


def test_state_that_grows_or_fills_in_over_a_run_still_restores() -> None:
    from fl_kd.checkpoint import object_state, restore_object_state

    saved = _State()
    saved.rounds_done, saved.best = 7.0, 0.8  # a counter saved as a float; an optional figure now set
    saved.cache = torch.ones(9, dtype=torch.float32)  # the teacher cache grows
    rebuilt = _State()
    rebuilt.rounds_done = np.int64(0)  # type: ignore[assignment]  # a numpy count is a number too
    restore_object_state(rebuilt, object_state(saved), "saved")
    assert rebuilt.rounds_done == 7.0 and rebuilt.best == 0.8 and torch.equal(rebuilt.cache, torch.ones(9))


def test_the_knowledge_cache_comes_back_only_onto_the_transfer_set_it_indexes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its positions are rows of one transfer set: another seed draws other samples, whose rows they would name."""
    server = _server()
    server.knowledge_cache.update([1, 5], torch.ones(2, server.num_classes))
    path = tmp_path / "server.pt"
    server.save(path)
    same = _server()
    same.load(path)
    assert same.knowledge_cache.num_filled == 2 and torch.equal(same.knowledge_cache.get([1, 5]), torch.ones(2, 10))
    cfg = tiny_config(seed=1)
    other = build_server(cfg, build_federation(cfg))
    assert not torch.equal(other.transfer_x, server.transfer_x)
    with caplog.at_level("WARNING"):
        other.load(path)
    assert other.knowledge_cache.num_filled == 0 and "another transfer set" in caplog.text
    assert all(torch.equal(other.model.state_dict()[k], v) for k, v in server.model.state_dict().items())


def _changed(good: Path, change) -> dict:  # noqa: ANN001
    """The checkpoint at ``good`` with its first floating-point weight changed by ``change``."""
    state = torch.load(good, weights_only=True)
    key = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][key] = change(state["model"][key])
    return state
