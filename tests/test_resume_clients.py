"""A restarted ServerApp ends where an uninterrupted run ends, clients included, for every KD strategy.

A resumed run is a new Flower run: every ClientApp starts with an empty ``context.state``. Here the server dies in
round 2 (after the clients trained and saved that round), and a new server resumes after round 1 against nodes with
fresh contexts (the in-process grid), so each client must reload its state of round 1 from its node, not round 2's.
A state file of the wrong round, another client or a corrupted one is refused with a logged reason.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from flwr.app import Message
from flwr.clientapp import ClientApp

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import ConfigError
from fl_kd.kd import runner
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.progress import (
    ClientStateError,
    client_state_folder,
    folder_run_id,
    load_client_state,
    load_progress,
    run_key,
    save_client_state,
)
from fl_kd.kd.protocol import CLIENT_STATE, OUTPUT_DIR_KEY, RUN_CONFIG_KEY, RUN_ID_KEY
from fl_kd.kd.round_policy import RoundPolicy
from fl_kd.strategies.kd import KDStrategy
from fl_kd.strategies.kd_app import make_strategy
from fl_kd.strategies.kd_rounds import run_rounds
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config
from tests.test_deploy_faults import _FlakyGrid as FlakyGrid
from tests.test_fedavg import weight_config
from tests.test_fedmd_common import peer_config

ROUNDS = 3


class ServerDiedError(RuntimeError):
    """The ServerApp process is gone (raised into the round loop, as a SIGKILL would end it)."""


def _dies_in_round_2(message: Message, reply: Message) -> list[Message]:
    """The server dies once the first client has answered round 2's evaluate message (all have trained it)."""
    if message.metadata.message_type == "evaluate" and message.content["config"]["server-round"] == 2:
        raise ServerDiedError
    return [reply]


def _grid(cfg: ExperimentConfig, out_dir: Path, tamper: Any = None, run_id: bool = True) -> LoopbackGrid:
    """Nodes with fresh contexts, as after a new ``flwr run``; with ``run_id``, told the folder's id as the launchers
    tell them (without it, as a launcher of before the run id did)."""
    run_config: dict[str, str | int | float | bool] = {RUN_CONFIG_KEY: cfg.to_json(), OUTPUT_DIR_KEY: str(out_dir)}
    if run_id:
        run_config[RUN_ID_KEY] = folder_run_id(out_dir)
    return LoopbackGrid(client_app, cfg.num_clients, run_config, tamper)


def _rows(strategy: KDStrategy) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "wall_seconds"} for row in strategy.history]


def _client_states(grid: LoopbackGrid) -> dict[int, dict[str, torch.Tensor]]:
    return {
        int(context.node_config["partition-id"]): context.state.array_records[CLIENT_STATE].to_torch_state_dict()
        for context in grid.contexts.values()
    }


def _uninterrupted(cfg: ExperimentConfig, out_dir: Path) -> tuple[KDStrategy, LoopbackGrid]:
    strategy, grid = make_strategy(cfg), _grid(cfg, out_dir)
    run_rounds(strategy, grid, ROUNDS, RoundPolicy(), out_dir, cfg.to_json())
    return strategy, grid


def _cut_in_round_2(cfg: ExperimentConfig, out_dir: Path) -> None:
    with pytest.raises(ServerDiedError):
        run_rounds(make_strategy(cfg), _grid(cfg, out_dir, _dies_in_round_2), ROUNDS, RoundPolicy(), out_dir,
                   cfg.to_json())  # fmt: skip


def _resume(cfg: ExperimentConfig, out_dir: Path, run_id: bool = True) -> tuple[KDStrategy, LoopbackGrid]:
    resumed = load_progress(out_dir, cfg.to_json())
    assert resumed is not None and resumed.round == 1
    strategy, grid = make_strategy(cfg), _grid(cfg, out_dir, run_id=run_id)
    run_rounds(strategy, grid, ROUNDS, RoundPolicy(resume=True), out_dir, cfg.to_json(), resumed)
    return strategy, grid


CONFIGS = {
    "fedgems": lambda: tiny_config(rounds=ROUNDS),
    # Client state that exists only after a first distillation: the kept copy and the server's kept knowledge.
    "fedgems_kept": lambda: tiny_config(
        rounds=ROUNDS, client_finetune_epochs=1, client_keep_distilled=True, client_anchor=1.0
    ),
    "fedmd": lambda: peer_config("fedmd", rounds=ROUNDS),
    "fedavg": lambda: weight_config("fedavg", rounds=ROUNDS),
    # The server's own trainer on its root data (FLTrust) is part of its state.
    "fedavg_fltrust": lambda: weight_config("fedavg", rounds=ROUNDS, aggregation="fltrust"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_run_resumed_after_round_1_ends_bit_identical_clients_included(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = CONFIGS[name]()
    whole, whole_grid = _uninterrupted(cfg, tmp_path / "whole")
    _cut_in_round_2(cfg, tmp_path / "cut")
    folder = client_state_folder(tmp_path / "cut" / "client-state", run_key(cfg.to_json(), str(tmp_path / "cut")), 0)
    assert sorted(path.name for path in folder.iterdir()) == ["round-1.pt", "round-2.pt"]  # round 2 was begun
    with caplog.at_level("INFO", logger="flwr"):
        resumed, resumed_grid = _resume(cfg, tmp_path / "cut")
    assert "Client 0 reloaded its state of round 1" in caplog.text
    assert [row["round"] for row in resumed.history] == [1, 2, 3]
    assert _rows(resumed) == _rows(whole)  # server and client accuracies, bytes, knowledge sources: every figure
    for client_id, state in _client_states(whole_grid).items():
        restored = _client_states(resumed_grid)[client_id]
        assert all(torch.equal(state[key], restored[key]) for key in state), f"client {client_id} differs"


def test_a_run_whose_folder_moved_resumes_with_its_clients_states(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clients' states are named by the run's id, kept in its folder: a folder copied elsewhere resumes to the
    end an uninterrupted run reaches. Named by the folder's path, as before the id, every client refused."""
    cfg = CONFIGS["fedgems_kept"]()
    whole, _ = _uninterrupted(cfg, tmp_path / "whole")
    _cut_in_round_2(cfg, tmp_path / "cut")
    shutil.copytree(tmp_path / "cut", tmp_path / "by-path")
    shutil.move(tmp_path / "cut", tmp_path / "moved")
    with caplog.at_level("INFO", logger="flwr"):
        resumed, _ = _resume(cfg, tmp_path / "moved")
    assert "Client 0 reloaded its state of round 1" in caplog.text
    assert _rows(resumed) == _rows(whole)
    caplog.clear()
    with caplog.at_level("INFO", logger="flwr"):
        by_path, _ = _resume(cfg, tmp_path / "by-path", run_id=False)
    assert "Client 0 refuses to go on" in caplog.text and "reloaded its state" not in caplog.text
    assert all(row["n_rejected"] == cfg.num_clients for row in by_path.history[1:])


def test_a_run_id_is_written_once_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    assert folder_run_id(folder) == str(folder.resolve())
    (folder / "run-id").write_text("outputs/earlier\n")
    assert folder_run_id(folder) == "outputs/earlier"
    (folder / "run-id").write_text("\n")
    with pytest.raises(ConfigError, match="run-id is empty"):
        folder_run_id(folder)


def test_a_state_of_another_round_or_a_corrupted_one_is_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(rounds=ROUNDS)
    out_dir = tmp_path / "cut"
    _cut_in_round_2(cfg, out_dir)
    root, run = out_dir / "client-state", run_key(cfg.to_json(), str(out_dir))
    # Client 0's round-2 state put where round 1's belongs; client 1's round-1 file cut short.
    folder = client_state_folder(root, run, 0)
    (folder / "round-2.pt").replace(folder / "round-1.pt")
    corrupted = client_state_folder(root, run, 1) / "round-1.pt"
    corrupted.write_bytes(corrupted.read_bytes()[:200])
    with caplog.at_level("WARNING", logger="flwr"):
        strategy, _ = _resume(cfg, out_dir)
    assert "round-1.pt: saved for round 2, expected 1" in caplog.text
    assert "round-1.pt: unreadable" in caplog.text
    # The two refuse, so their answers are rejected (not missing: their nodes replied), never mixed in.
    assert "client error: ValueError: client 0 lost its state of round 1" in caplog.text
    assert "client error: ValueError: client 1 lost its state of round 1" in caplog.text
    assert [(row["n_rejected"], row["n_missing"]) for row in strategy.history] == [(0, 0), (2, 0), (2, 0)]


def test_load_client_state_takes_exactly_the_round_client_and_run_it_was_saved_for(tmp_path: Path) -> None:
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_client_state(tmp_path, 3, client_id=2, run="run-a", state=state)
    assert torch.equal(load_client_state(tmp_path, 3, 2, "run-a")["w"], state["w"])
    for args, reason in (
        ((4, 2, "run-a"), r"no state saved for round 4 \(saved rounds here: \[3\]\)"),
        ((3, 1, "run-a"), "saved for client 2, expected 1"),
        ((3, 2, "run-b"), "saved for run 'run-a', expected 'run-b'"),
    ):
        with pytest.raises(ClientStateError, match=reason):
            load_client_state(tmp_path, *args)
    payload = torch.load(tmp_path / "round-3.pt", weights_only=True)
    payload["state"]["w"][0, 0] = 99.0  # a changed value, the file otherwise well formed
    torch.save(payload, tmp_path / "round-3.pt")
    with pytest.raises(ClientStateError, match="do not match the digest saved with them"):
        load_client_state(tmp_path, 3, 2, "run-a")
    # Two rounds are kept; a later round's file (a run that died before its server saved it) is dropped.
    for server_round in (1, 5, 2):
        save_client_state(tmp_path, server_round, 2, "run-a", state)
    assert sorted(path.name for path in tmp_path.glob("round-*.pt")) == ["round-1.pt", "round-2.pt"]


def test_resume_is_refused_for_a_server_whose_state_cannot_be_saved(tmp_path: Path) -> None:
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    strategy.server.lock = threading.Lock()
    with pytest.raises(ConfigError, match=r"resume=true: FedGEMSServer cannot resume.*root\.lock: a lock"):
        run_rounds(strategy, _grid(cfg, tmp_path), 2, RoundPolicy(resume=True), tmp_path, cfg.to_json())


def test_a_supernode_that_restarts_mid_run_reloads_its_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(rounds=ROUNDS)
    strategy = make_strategy(cfg)
    # Client 3's SuperNode dies after round 1 and comes back in round 3 as a new node with an empty context.state.
    grid = FlakyGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json(), OUTPUT_DIR_KEY: str(tmp_path)})
    with caplog.at_level("INFO", logger="flwr"):
        run_rounds(strategy, grid, ROUNDS, RoundPolicy(min_clients=3), tmp_path, cfg.to_json())
    assert "Client 3 reloaded its state of round 1" in caplog.text
    assert [row["n_missing"] for row in strategy.history] == [0, 1, 0]  # round 2: no node holds client 3


def _run_losing_answers(tmp_path: Path, rounds: int, lost: tuple[int, ...], restart: int | None = None) -> KDStrategy:
    """A run in which client 0's train answers of rounds ``lost`` never reach the server (a timeout), its node
    restarting with an empty ``context.state`` in round ``restart``."""
    cfg = tiny_config(rounds=rounds)
    grid: LoopbackGrid | None = None

    def lose(message: Message, reply: Message) -> list[Message]:
        assert grid is not None
        context = grid.contexts[message.metadata.dst_node_id]
        if context.node_config["partition-id"] == 0 and message.metadata.message_type == "train":
            server_round = message.content.config_records["config"]["server-round"]
            if server_round == restart:
                context.state.__init__()  # type: ignore[misc]  # the SuperNode restarts: context.state is empty
            if server_round in lost:
                return []
        return [reply]

    grid = LoopbackGrid(
        client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json(), OUTPUT_DIR_KEY: str(tmp_path)}, lose
    )
    strategy = make_strategy(cfg)
    run_rounds(strategy, grid, rounds, RoundPolicy(min_clients=1), tmp_path, cfg.to_json())
    return strategy


def test_a_client_whose_answers_the_server_never_got_goes_on_from_the_round_the_server_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Client 0's train answers of rounds 2 and 3 are lost. It trained and saved anyway, and its node kept only those
    two rounds' files, so after a restart it could not reload round 1, which the server still named, and refused
    every later message. Now round 1's file stays, and the client goes on from it."""
    with caplog.at_level("INFO", logger="flwr"):
        strategy = _run_losing_answers(tmp_path, 4, lost=(2, 3), restart=3)
    assert [row["n_missing"] for row in strategy.history] == [0, 1, 1, 0]
    assert [row["n_rejected"] for row in strategy.history] == [0, 0, 0, 0]
    assert "Client 0 reloaded its state of round 1" in caplog.text
    assert "lost its state" not in caplog.text


def test_a_client_holding_a_later_state_than_the_server_names_goes_back_to_that_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a restart, the client held its round-2 state while the server named round 1 (its answer of round 2
    was lost): it now reloads round 1, as a restarted node would, so both paths continue from the same state."""
    with caplog.at_level("INFO", logger="flwr"):
        strategy = _run_losing_answers(tmp_path, 3, lost=(2,))
    assert "Client 0 holds its state of round 2; the server goes on from round 1" in caplog.text
    assert "Client 0 reloaded its state of round 1" in caplog.text
    assert [row["n_missing"] for row in strategy.history] == [0, 1, 0]


def test_a_client_whose_training_raised_keeps_the_knowledge_it_took_in_that_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Client 3's training raises in round 1 only; it still takes in round 1's knowledge. The server used to name
    round 0 as its state in round 2, so the ClientApp went back to its seeded model while the in-process runner's
    client kept the knowledge: the two runtimes parted from round 2."""
    cfg, faulty = tiny_config(rounds=ROUNDS), 3

    def fails_once(train: Any) -> Any:
        def step(server_round: int, instruction: Any) -> Any:
            if server_round == 1:
                raise RuntimeError("transient failure")
            return train(server_round, instruction)

        return step

    def app(message: Message, context: Any) -> Message:
        if context.node_config["partition-id"] == faulty and message.metadata.message_type == "train":
            if message.content.config_records["config"]["server-round"] == 1:
                raise RuntimeError("transient failure")
        return client_app(message, context)

    strategy = make_strategy(cfg)
    run_config: dict[str, str | int | float | bool] = {RUN_CONFIG_KEY: cfg.to_json(), OUTPUT_DIR_KEY: str(tmp_path)}
    grid = LoopbackGrid(cast(ClientApp, app), cfg.num_clients, run_config)  # the grid only calls it
    with caplog.at_level("INFO", logger="flwr"):
        run_rounds(strategy, grid, ROUNDS, RoundPolicy(), tmp_path, cfg.to_json())
    assert "Client 3 reloaded" not in caplog.text and "Client 3 holds its state" not in caplog.text

    build_parties = runner.build_parties

    def with_a_faulty_client(cfg: ExperimentConfig, federation: Any) -> Any:
        server, clients = build_parties(cfg, federation)
        clients[faulty].train = fails_once(clients[faulty].train)  # type: ignore[method-assign]
        return server, clients

    monkeypatch.setattr(runner, "build_parties", with_a_faulty_client)
    inprocess = [{k: v for k, v in row.items() if k != "wall_seconds"} for row in runner.run_inprocess(cfg).rounds]
    assert [row["n_rejected"] for row in inprocess] == [1, 0, 0]
    assert _rows(strategy) == inprocess
