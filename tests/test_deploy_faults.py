"""The ServerApp's round loop under faults, on the in-process loopback grid (the real strategy and ClientApp).

A node that never answers plays a SuperNode that died; the loop must log it, finish the round with the others,
stop below the quorum before the server learns from the round, and write progress after every round from which a
restarted server resumes to the same final metrics. The same on a real deployment: ``test_deployment_faults.py``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from fl_kd.clients.kd_app import app as client_app
from fl_kd.config import ConfigError
from fl_kd.kd import protocol as kd
from fl_kd.kd.progress import PROGRESS_DIR, PROGRESS_FILE, ProgressError, load_progress, save_progress
from fl_kd.kd.protocol import RUN_CONFIG_KEY
from fl_kd.kd.round_policy import QuorumError, RoundPolicy
from fl_kd.protocol import payload_nbytes
from fl_kd.results import SERVER_ERROR_JSON, record_server_error, server_error
from fl_kd.strategies.kd_app import make_strategy
from fl_kd.strategies.kd_rounds import run_rounds
from tests.flower_loopback import LoopbackGrid
from tests.kd_configs import tiny_config

DEAD_NODE = 1000 + 7 * 3  # LoopbackGrid gives partition p the node id 1000 + 7 p


def _dead_after_hello(message: Message, reply: Message) -> list[Message]:
    """Client 3 said hello, then its SuperNode died: no more replies from it."""
    return [reply] if message.metadata.dst_node_id != DEAD_NODE or message.metadata.message_type == "query" else []


def _rows(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "wall_seconds"} for row in rows]


def test_policy_from_run_config() -> None:
    assert RoundPolicy.from_run_config({}) == RoundPolicy()
    policy = RoundPolicy(min_clients=2, round_timeout_s=30.0, resume=True)
    assert RoundPolicy.from_run_config(policy.to_run_config()) == policy
    assert RoundPolicy.from_run_config({"round-timeout": 30}).round_timeout_s == 30.0
    for bad, message in (
        ({"min-clients": 0}, "run config min-clients must be an int >= 1"),
        ({"min-clients": 1.5}, "run config min-clients must be an int >= 1"),
        ({"round-timeout": -1.0}, "run config round-timeout must be > 0"),
        ({"round-timeout": "soon"}, "run config round-timeout must be a finite number"),
        ({"resume": "yes"}, "run config resume must be true or false"),
    ):
        with pytest.raises(ConfigError, match=message):
            RoundPolicy.from_run_config(bad)


def test_a_serverapp_told_to_resume_a_folder_without_a_saved_round_stops_at_once(tmp_path: Path) -> None:
    """``flwr run ... resume=true`` with a mistyped or remounted output-dir started the federation again in silence.

    The error it stops with is left for the launcher in place of an earlier attempt's, which it used to report."""
    from fl_kd.kd.protocol import OUTPUT_DIR_KEY
    from fl_kd.strategies.kd_app import main

    record_server_error(tmp_path, ConfigError("the server model diverged (attempt 1)"), user_error=True)
    run_config: dict[str, bool | float | int | str] = {
        RUN_CONFIG_KEY: tiny_config().to_json(),
        OUTPUT_DIR_KEY: str(tmp_path),
        "resume": True,
    }
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    with pytest.raises(ProgressError, match="resume=true: .* holds no saved round"):
        main(cast(Any, None), context)  # it stops before the grid is touched
    assert [path.name for path in tmp_path.iterdir()] == [SERVER_ERROR_JSON]
    assert server_error(tmp_path) == {
        "error_type": "ProgressError",
        "message": f"resume=true: {tmp_path} holds no saved round; submit the run without resume to start it",
        "user_error": False,
    }


def test_a_dead_node_is_logged_and_the_round_completes_with_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, _dead_after_hello)
    sent: dict[int, int] = {}  # round -> bytes of the messages the grid was given to send
    send = grid.send_and_receive

    def counting(messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for message in messages:
            round_ = cast(int, message.content.config_records[kd.CONFIG].get(kd.SERVER_ROUND, 0))  # 0: a query
            sent[round_] = sent.get(round_, 0) + payload_nbytes(message.content)
        return send(messages, timeout=timeout)

    grid.send_and_receive = counting  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="flwr"):
        run_rounds(strategy, grid, 2, RoundPolicy(min_clients=3), tmp_path, cfg.to_json())
    assert [row["round"] for row in strategy.history] == [1, 2]
    assert all(row["n_missing"] == 1 for row in strategy.history)
    # The knowledge built for the dead node is not sent, so not booked: it was, 2,400 bytes a round too many.
    assert [row["downlink_bytes"] for row in strategy.history] == [sent[1], sent[2]]
    assert "no train answer from node(s) [1021]" in caplog.text
    assert load_progress(tmp_path, cfg.to_json()).round == 2  # type: ignore[union-attr]


def test_a_node_that_cannot_identify_itself_is_logged_with_its_reason_and_counted_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its SuperNode runs but its ClientApp cannot start (a wrong data folder): the server says why, and its
    partition counts as missing in every round it is sampled, not as if the federation were whole."""
    cfg = tiny_config()
    reason = "node data folder /data/client-9 does not exist"

    def broken_node(message: Message, reply: Message) -> list[Message]:
        if message.metadata.dst_node_id == DEAD_NODE:
            return [Message(Error(code=1, reason=reason), reply_to=message)]
        return [reply]

    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, broken_node)
    with caplog.at_level("WARNING", logger="flwr"):
        run_rounds(strategy, grid, 2, RoundPolicy(min_clients=3), tmp_path, cfg.to_json())
    assert f"Node {DEAD_NODE} could not identify itself ({reason}); it is left out" in caplog.text
    assert "Round 1: no node holds the sampled partition(s) [3]" in caplog.text
    assert "no answer from clients" not in caplog.text  # it was never asked: one warning a round says so
    assert [row["n_missing"] for row in strategy.history] == [1, 1]


def test_below_the_quorum_the_run_stops_before_the_server_learns_from_the_round(tmp_path: Path) -> None:
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, _dead_after_hello)
    with pytest.raises(QuorumError, match="round 1: 3 of 4 asked clients answered .* fewer than min_clients=4"):
        run_rounds(strategy, grid, 2, RoundPolicy(min_clients=4), tmp_path, cfg.to_json())
    assert strategy.history == [] and not (tmp_path / PROGRESS_DIR / PROGRESS_FILE).exists()


def test_a_client_that_raises_every_round_never_stops_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its node is alive: it counts towards the quorum, its answer is rejected, and it still takes in the server's
    knowledge, so its state is of the round, as in the in-process runner.

    It was counted missing as well as rejected, logged as silent "within 300 s" though its error came at once, and
    sent no evaluate message, where the in-process runner evaluates it."""
    cfg = tiny_config()
    evaluated: list[int] = []

    def raising_app(message: Message, context: Context) -> Message:
        if context.node_id == DEAD_NODE and message.metadata.message_type == "train":
            raise RuntimeError("boom")
        if message.metadata.message_type == "evaluate":
            evaluated.append(context.node_id)
        return client_app(message, context)

    strategy = make_strategy(cfg)
    app = cast(ClientApp, raising_app)  # the grid only calls it, as it calls a ClientApp
    grid = LoopbackGrid(app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()})
    run_rounds(strategy, grid, 2, RoundPolicy(min_clients=cfg.num_clients), tmp_path, cfg.to_json())
    assert [(row["round"], row["n_rejected"], row["n_missing"]) for row in strategy.history] == [(1, 1, 0), (2, 1, 0)]
    assert evaluated.count(DEAD_NODE) == 2 and "no train answer" not in caplog.text
    assert load_progress(tmp_path, cfg.to_json()).client_rounds == {0: 2, 1: 2, 2: 2, 3: 2}  # type: ignore[union-attr]


@pytest.mark.parametrize("phase", ["query", "train", "evaluate"])
def test_a_node_the_superlink_reports_unavailable_counts_as_silent_not_as_a_client_error(
    phase: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flower's SuperLink answers for a node whose heartbeat stopped with an error it sends itself (node id 1): it
    was counted as a rejected answer of an unknown client while the node was counted missing too, and in discovery
    named node 1 as the one that could not identify itself."""

    def unavailable(message: Message, reply: Message) -> list[Message]:
        if message.metadata.dst_node_id == DEAD_NODE and message.metadata.message_type == phase:
            return [create_message_error_unavailable_res_message(message.metadata, "node_unavail")]
        return [reply]

    def silent(message: Message, reply: Message) -> list[Message]:
        return [] if message.metadata.dst_node_id == DEAD_NODE and message.metadata.message_type == phase else [reply]

    cfg = tiny_config(rounds=1)
    rows = []
    for tamper in (unavailable, silent):
        strategy = make_strategy(cfg)
        grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()}, tamper)
        with caplog.at_level("WARNING", logger="flwr"):
            run_rounds(strategy, grid, 1, RoundPolicy(min_clients=1), tmp_path / tamper.__name__, cfg.to_json())
        rows.append(_rows(strategy.history))
    assert rows[0] == rows[1]
    assert rows[0][0]["n_rejected"] == rows[0][0]["n_eval_dropped"] == 0
    assert rows[0][0]["n_missing"] == (1 if phase in ("query", "train") else 0)
    if phase == "query":
        assert f"Node {DEAD_NODE} is unavailable" in caplog.text and "Node 1 " not in caplog.text


def test_a_restarted_server_resumes_after_the_last_saved_round_to_the_same_end(tmp_path: Path) -> None:
    cfg = tiny_config(rounds=3)
    uninterrupted = make_strategy(cfg)
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()})
    run_rounds(uninterrupted, grid, 3, RoundPolicy(), tmp_path / "whole", cfg.to_json())

    # The server dies after round 1; the clients (their SuperNodes) live on and keep their state.
    grid = LoopbackGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()})
    first = make_strategy(cfg)
    run_rounds(first, grid, 1, RoundPolicy(), tmp_path / "cut", cfg.to_json())
    resumed = load_progress(tmp_path / "cut", cfg.to_json())
    assert resumed is not None and resumed.round == 1
    second = make_strategy(cfg)
    run_rounds(second, grid, 3, RoundPolicy(resume=True), tmp_path / "cut", cfg.to_json(), resumed)
    assert _rows(second.history) == _rows(uninterrupted.history)
    assert sorted(p.name for p in (tmp_path / "cut" / PROGRESS_DIR).iterdir()) == [PROGRESS_FILE, "round-3.pt"]


def test_saved_progress_is_refused_when_it_cannot_be_resumed(tmp_path: Path) -> None:
    cfg = tiny_config()
    strategy = make_strategy(cfg)
    path = save_progress(tmp_path, 1, strategy.server, [{"round": 1}], cfg.to_json())
    with pytest.raises(ProgressError, match="saved by another experiment config"):
        load_progress(tmp_path, tiny_config(seed=12).to_json())
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "history": []}))
    with pytest.raises(ProgressError, match="0 metric rows for round 1"):
        load_progress(tmp_path, cfg.to_json())
    path.write_text("{not json")
    with pytest.raises(ProgressError, match="unreadable progress"):
        load_progress(tmp_path, cfg.to_json())
    path.write_text(json.dumps(state))
    checkpoint = tmp_path / PROGRESS_DIR / "round-1.pt"
    good = checkpoint.read_bytes()
    middle = len(good) // 2  # a flipped bit inside the saved weights: torch.load read it without a word
    checkpoint.write_bytes(good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1 :])
    with pytest.raises(ProgressError, match="round-1.pt is not the file it saved"):
        load_progress(tmp_path, cfg.to_json())
    checkpoint.write_bytes(good)
    assert load_progress(tmp_path, cfg.to_json()) is not None
    checkpoint.unlink()
    with pytest.raises(ProgressError, match="round-1.pt is missing"):
        load_progress(tmp_path, cfg.to_json())
    assert load_progress(tmp_path / "elsewhere", cfg.to_json()) is None


def _edit(state: dict[str, Any], key: str, value: Any) -> Any:
    """``state`` with ``key`` (``a.b`` for a nested one) set to ``value``; a bare value replaces the whole record."""
    if key == "":
        return value
    edited = json.loads(json.dumps(state))
    *parents, last = key.split(".")
    target = edited
    for parent in parents:
        target = target[parent]
    target[last] = value
    return edited


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("", [1, 2], "not a progress record"),
        ("round", "1", "round must be a whole number >= 1"),
        ("round", True, "round must be a whole number >= 1"),
        ("round", 1.5, "round must be a whole number >= 1"),
        ("history", {"round": 1}, "history must be a list of metric rows"),
        ("history", [{"round": 2}], "rounds 1, 2, ... in order"),
        ("server_checkpoint", "../../elsewhere.pt", "server_checkpoint must be round-1.pt"),
        ("client_rounds", [1], "client_rounds must be a mapping"),
        ("client_rounds", {"-3": 1}, "client id '-3' is no whole number"),
        ("client_rounds", {"0": 2}, "round 2 is not in 1..1"),
        ("rng.torch", "AAAA", "a torch generator state of 3 bytes"),
        # of torch's size, but no state: it passed the load and failed the restore with torch's RuntimeError
        ("rng.torch", base64.b64encode(b"\xff" * torch.get_rng_state().numel()).decode(), "not a torch generator"),
        ("rng.numpy", ["PCG64", "", 0, 0, 0.0], "not a NumPy MT19937 state"),
    ],
)
def test_saved_progress_of_the_wrong_shape_is_refused_with_the_files_name(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    """Wrong types were coerced (a round of "2" or 2.7, a history given as a dict) or crashed later, unnamed."""
    cfg = tiny_config()
    path = save_progress(tmp_path, 1, make_strategy(cfg).server, [{"round": 1}], cfg.to_json(), client_rounds={0: 1})
    assert load_progress(tmp_path, cfg.to_json()) is not None
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), key, value)))
    with pytest.raises(ProgressError, match=f"{path.name}: .*{re.escape(message)}"):
        load_progress(tmp_path, cfg.to_json())


class _FlakyGrid(LoopbackGrid):
    """Client 3's SuperNode dies before round 2 (Flower stops listing it) and comes back in round 3 as a new node."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.listings = 0

    def get_node_ids(self) -> list[int]:
        self.listings += 1  # once per round, at the start of its train phase
        if self.listings == 2:
            self.contexts.pop(DEAD_NODE)
        if self.listings == 3:
            self.contexts[2000] = Context(
                run_id=1, node_id=2000, node_config={"partition-id": 3, "num-partitions": 4}, state=RecordDict(),
                run_config=self.contexts[1000].run_config,
            )  # fmt: skip
        return list(self.contexts)


def test_a_node_that_comes_back_rejoins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(rounds=3)
    strategy = make_strategy(cfg)
    grid = _FlakyGrid(client_app, cfg.num_clients, {RUN_CONFIG_KEY: cfg.to_json()})
    with caplog.at_level("INFO", logger="flwr"):
        run_rounds(strategy, grid, 3, RoundPolicy(min_clients=3), tmp_path, cfg.to_json())
    assert f"Node {DEAD_NODE} is gone" in caplog.text
    assert [record.getMessage() for record in caplog.records if "Discovered" in record.getMessage()] == [
        "Discovered 4 of 4 clients",
        "Discovered 4 of 4 clients",
    ]
    assert strategy._nodes[3] == 2000  # noqa: SLF001 - partition 3 is served by the node that came back
    assert [row["round"] for row in strategy.history] == [1, 2, 3]
