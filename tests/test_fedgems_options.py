"""The optional FedGEMS extensions (fl_kd.kd.fedgems.options, reliability): each changes what it promises, and
the defaults are today's FedGEMS."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fl_kd.config import ConfigError
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.fedgems import FedGEMSClient, FedGEMSConfig, SelectiveDistillServer, ServerDistillConfig
from fl_kd.kd.fedgems.reliability import class_precision, confusion_matrix, fuse_by_reliability
from fl_kd.kd.runner import run_inprocess
from fl_kd.kd.training import accuracy
from fl_kd.models import build_model
from tests.kd_configs import tiny_config

SHAPE = (1, 8, 8)
C = 4


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=generator), torch.randint(0, C, (n,), generator=generator)


def _server(n: int = 40, unlabelled: int = 0, **options: Any) -> SelectiveDistillServer:
    x, y = _data(n)
    config = ServerDistillConfig(epochs=1, batch_size=8, lr=0.05, **options)
    u = _data(unlabelled, seed=1)[0] if unlabelled else None
    return SelectiveDistillServer(build_model("cnn_small", SHAPE, C, seed=0), x, y, config, seed=3, unlabelled_x=u)


def _memorise(server: SelectiveDistillServer, rounds: int = 40) -> None:
    for round in range(rounds):
        server.distill(round, {})


def test_defaults_are_todays_fedgems() -> None:
    defaults = {f.name: f.default for f in fields(FedGEMSConfig)}
    assert defaults["correctness"] == "train" and defaults["distill_correct"] is False
    assert defaults["unlabelled_trust"] == "none" and defaults["client_finetune_epochs"] == 0
    assert defaults["client_unlabelled"] is False
    stats = _server().distill(0, {})
    assert set(stats.round_metrics()) == {
        "n_self", "n_cache", "n_clients", "n_ce_only", "num_answered", "cache_size", "server_loss",
        "n_untrusted", "untrusted_accuracy",
    }  # fmt: skip
    # No client answered, so every labelled sample is untrusted and the figure is the plain transfer accuracy.
    assert stats.extra["n_untrusted"] == 40


def test_held_out_correctness_keeps_the_query_open_after_memorisation() -> None:
    # Random labels can only be memorised: judged on its training samples the server soon asks nothing, judged on
    # a held-out slice it keeps asking wherever it is wrong there.
    plain, held = _server(), _server(correctness="held_out", held_out_fraction=0.25)
    _memorise(plain)
    _memorise(held)
    assert plain.needed_positions().size == 0
    held_positions = held.options.held_out_positions
    assert held_positions.size == 10
    query = held.needed_positions()
    assert query.size > 0 and set(query) <= set(held_positions)
    assert not held.knowledge_cache.filled[torch.from_numpy(held_positions)].any()  # never cached
    stats = held.distill(99, {})
    assert stats.extra["held_out_accuracy"] < 0.8  # not memorised: it never saw those labels
    assert stats.n_self + stats.n_cache + stats.n_clients + stats.n_ce_only == 40 - held_positions.size


def test_held_out_samples_learn_from_the_clients_alone() -> None:
    server = _server(correctness="held_out", held_out_fraction=0.25)
    _memorise(server, 10)
    positions = server.needed_positions()
    labels = server.transfer_y[torch.from_numpy(positions)]
    teacher = (F.one_hot(labels, C) * 8.0).numpy()  # a client that is right there, confidently
    for round in range(10, 30):
        server.distill(round, {0: (positions, teacher)})
    assert server.needed_positions().size < positions.size  # the clients' knowledge reached the held-out samples


def test_a_held_out_label_never_reaches_the_server_through_the_teacher() -> None:
    # Two clients answer every held-out sample: one always predicts class 0, the other class 1, equally sure. A
    # teacher made of the clients that match the label would pass the label on; here the two servers, whose
    # held-out labels differ, must train to the same weights.
    servers = [_server(correctness="held_out", held_out_fraction=0.25) for _ in range(2)]
    positions = servers[0].options.held_out_positions
    held = torch.from_numpy(positions)
    servers[1].transfer_y[held] = (servers[0].transfer_y[held] + 1) % C
    answers = {
        0: (positions, (F.one_hot(torch.zeros(positions.size, dtype=torch.long), C) * 4.0).numpy()),
        1: (positions, (F.one_hot(torch.ones(positions.size, dtype=torch.long), C) * 4.0).numpy()),
    }
    stats = [server.distill(0, answers) for server in servers]
    for a, b in zip(servers[0].model.state_dict().values(), servers[1].model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert stats[0].n_clients == stats[1].n_clients == positions.size  # the slice learnt from both clients
    # The figures still read the labels: where neither client matched, the sample counts as untrusted.
    for server, stat in zip(servers, stats, strict=True):
        labels = server.transfer_y[held]
        assert stat.extra["n_untrusted"] == int((labels > 1).sum())


def test_with_unlabelled_trust_the_held_out_slice_is_not_distilled() -> None:
    # There the trust is fitted on the slice's labels: answers on the slice alone must not move the server.
    options: dict[str, Any] = dict(correctness="held_out", held_out_fraction=0.25, unlabelled_trust="class_reliability")
    quiet, asked = _server(unlabelled=20, **options), _server(unlabelled=20, **options)
    positions = asked.options.held_out_positions
    labels = asked.transfer_y[torch.from_numpy(positions)]
    stats = asked.distill(0, {0: (positions, (F.one_hot(labels, C) * 8.0).numpy())})
    quiet.distill(0, {})
    for a, b in zip(quiet.model.state_dict().values(), asked.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert stats.n_clients == 0 and stats.extra["n_untrusted"] == 0  # the client was right on every one


def test_distill_correct_asks_and_distils_where_the_server_is_right() -> None:
    plain, dark = _server(), _server(distill_correct=True)
    _memorise(plain)
    _memorise(dark)
    assert plain.needed_positions().size == 0
    query = dark.needed_positions()
    np.testing.assert_array_equal(query, np.arange(40))
    # A client that agrees with the label but is unsure (dark knowledge on the other classes).
    soft = torch.full((40, C), 0.0)
    soft[torch.arange(40), dark.transfer_y] = 1.0
    before = F.softmax(dark._predict(), dim=1).max(dim=1).values.mean()
    stats = dark.distill(50, {0: (query, soft.numpy())})
    assert stats.extra["n_dark"] == stats.n_self > 30
    after = F.softmax(dark._predict(), dim=1).max(dim=1).values.mean()
    assert after < before  # pulled from its memorised one-hot towards the clients' softer view
    assert "n_dark" not in plain.distill(50, {}).round_metrics()


def test_confusion_matrix_and_precision_by_hand() -> None:
    logits = F.one_hot(torch.tensor([0, 0, 1, 2, 2, 2]), 3).float()
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    confusion = confusion_matrix(logits, labels, 3)
    assert confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    torch.testing.assert_close(class_precision(confusion), torch.tensor([2 / 4, 2 / 3, 3 / 5]))


def test_reliable_clients_dominate_and_silent_ones_count_for_nothing() -> None:
    logits = torch.stack([F.one_hot(torch.tensor([0, 0]), 2).float() * 5, F.one_hot(torch.tensor([1, 1]), 2) * 5.0])
    logits = torch.cat([logits, torch.full((1, 2, 2), float("nan"))])  # client 2 sent nothing (garbage slots)
    available = torch.tensor([[True, True], [True, True], [False, False]])
    precision = torch.tensor([[0.9, 0.9], [0.3, 0.3], [1.0, 1.0]])
    fused = fuse_by_reliability(logits, available, precision, power=4.0)
    assert fused.has_teacher.all() and torch.isfinite(fused.logits).all()
    assert (fused.logits.argmax(dim=1) == 0).all()
    torch.testing.assert_close(fused.weights.sum(dim=0), torch.ones(2))
    assert (fused.weights[2] == 0).all() and (fused.weights[0] > 0.98).all()
    equal = fuse_by_reliability(logits, available, precision, power=0.0)
    torch.testing.assert_close(equal.weights[:2], torch.full((2, 2), 0.5))


def test_reliability_weights_still_sum_to_one_when_a_high_power_underflows_the_trust() -> None:
    """0.01 ** 16 is 1e-32: below float32's reach of a normalised sum, yet both clients say class 0 with 0.99."""
    logits = torch.tensor([[[5.0, 0.0, 0.0]], [[5.0, 0.0, 0.0]]])
    available = torch.ones(2, 1, dtype=torch.bool)
    precision = torch.tensor([[0.01, 0.5, 0.5], [0.012, 0.5, 0.5]])
    fused = fuse_by_reliability(logits, available, precision, power=16.0)
    assert fused.has_teacher.all()
    torch.testing.assert_close(fused.weights.sum(dim=0), torch.ones(1))
    torch.testing.assert_close(fused.weights[:, 0], torch.tensor([1.0, 1.2**16]) / (1 + 1.2**16))
    assert F.softmax(fused.logits, dim=1)[0, 0] > 0.98
    unreliable = fuse_by_reliability(logits, available, torch.zeros(2, 3), power=16.0)
    assert not unreliable.has_teacher.any() and (unreliable.weights == 0).all()


def test_unlabelled_trust_asks_everything_and_distils_the_reliable_client() -> None:
    server = _server(n=40, unlabelled=30, unlabelled_trust="class_reliability", unlabelled_per_round=20)
    query = server.needed_positions(round=0)
    assert set(range(40)) <= set(query) and query.size == 60 and query.max() < 70
    assert not np.array_equal(query, server.needed_positions(round=1))  # another unlabelled subset each round
    labels = server.transfer_y
    good = F.one_hot(labels, C).float() * 6  # right on every labelled sample
    bad = F.one_hot((labels + 1) % C, C).float() * 6  # always wrong
    u_positions = query[query >= 40]
    u_good = F.one_hot(torch.zeros(u_positions.size, dtype=torch.long), C).float() * 6  # says class 0
    u_bad = F.one_hot(torch.ones(u_positions.size, dtype=torch.long), C).float() * 6  # says class 1
    answers = {
        0: (query, torch.cat([good, u_good]).numpy()),
        1: (query, torch.cat([bad, u_bad]).numpy()),
    }
    for round in range(8):
        stats = server.distill(round, answers)
    assert stats.extra["n_unlabelled"] == 20
    assert server.options.unlabelled_x is not None
    u_x = server.options.unlabelled_x[torch.from_numpy(u_positions - 40)]
    predictions = server.model.eval()(u_x).argmax(dim=1)
    assert (predictions == 0).float().mean() > 0.9  # the reliable client's answer, not the unreliable one's


def test_unlabelled_answers_out_of_range_are_refused() -> None:
    server = _server(n=40, unlabelled=5, unlabelled_trust="class_reliability")
    with pytest.raises(ValueError, match="positions"):
        server.distill(0, {0: (np.array([45]), np.zeros((1, C), np.float32))})


def _client() -> DistillClient:
    x, y = _data(64, seed=5)
    tx, ty = _data(20, seed=6)
    config = ClientTrainConfig(local_epochs=1, batch_size=16, lr=0.05, distill_epochs=1)
    return DistillClient(0, build_model("cnn_tiny", SHAPE, C, seed=0), x, y, tx, ty, config, seed=1)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every entry of the two state dicts equal, bit for bit."""
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_client_finetune_trains_on_private_data_after_distilling() -> None:
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    wrong = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))  # a server that says class 0 everywhere
    results = {}
    for epochs in (0, 3):
        role = FedGEMSClient(_client(), finetune_epochs=epochs)
        metrics = role.receive(0, Instruction({kd.SERVER_LOGITS: wrong}))
        with torch.no_grad():
            private = F.cross_entropy(role.client.model.eval()(role.client.train_x), role.client.train_y)
        results[epochs] = (metrics[kd.TRAIN_SAMPLES], float(private))
    assert results[3][0] == results[0][0] + 3 * 64
    assert results[3][1] < results[0][1]  # closer to its own data than right after distillation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"unlabelled_trust": "class_reliability"}, "unlabelled"),
        ({"correctness": "memorised"}, "correctness"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
        ({"client_finetune_epochs": -1}, "client_finetune_epochs"),
        ({"transfer": {"labelled": 60, "unlabelled": 40}, "client_unlabelled": True}, "client_unlabelled"),
    ],
)
def test_bad_option_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_all_options_run_end_to_end() -> None:
    cfg = tiny_config(
        rounds=2,
        transfer={"labelled": 60, "unlabelled": 40},
        correctness="held_out",
        distill_correct=True,
        unlabelled_trust="class_reliability",
        client_finetune_epochs=1,
    )
    rows = run_inprocess(cfg).rounds
    assert all(row["n_unlabelled"] == 40 and "held_out_accuracy" in row and "n_dark" in row for row in rows)


def test_clients_distil_the_servers_logits_on_the_rounds_unlabelled_subset() -> None:
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.fedgems import FedGEMSServer
    from fl_kd.kd.roles import Instruction

    server = _server(n=40, unlabelled=30, unlabelled_trust="class_reliability", unlabelled_per_round=12)
    role = FedGEMSServer(server, client_unlabelled=True)
    role.aggregate(1, {})
    instruction = role.evaluate_instruction(1, 0)
    positions = instruction.arrays[kd.UNLABELLED_POSITIONS]
    assert positions.shape == (12,) and positions.min() >= 40
    np.testing.assert_array_equal(positions - 40, server.options.unlabelled_positions(1))
    assert instruction.arrays[kd.UNLABELLED_LOGITS].shape == (12, C)

    x, y = _data(64, seed=5)
    tx, ty = _data(20, seed=6)
    public = torch.cat([tx, _data(30, seed=7)[0]])
    config = ClientTrainConfig(local_epochs=1, batch_size=16, lr=0.05, distill_epochs=1)
    client = FedGEMSClient(
        DistillClient(0, build_model("cnn_tiny", SHAPE, C, seed=0), x, y, tx, ty, config, seed=1, public_x=public)
    )
    logits = np.tile(np.eye(C, dtype=np.float32)[3] * 8, (12, 1))  # the server says class 3 on all of them
    server_logits = np.zeros((20, C), np.float32)
    unl = {kd.UNLABELLED_POSITIONS: np.arange(20, 32), kd.UNLABELLED_LOGITS: logits}
    before = client.client.model.eval()(public[20:32]).argmax(dim=1)
    metrics = client.receive(1, Instruction({kd.SERVER_LOGITS: server_logits, **unl}))
    assert metrics[kd.TRAIN_SAMPLES] == 20 + 12
    after = client.client.model.eval()(public[20:32]).argmax(dim=1)
    assert (after == 3).sum() > (before == 3).sum()
    with pytest.raises(ValueError, match="unlabelled part"):
        client.receive(1, Instruction({kd.SERVER_LOGITS: server_logits, **unl, kd.UNLABELLED_POSITIONS: np.arange(12)}))
    with pytest.raises(ValueError, match="together"):
        client.receive(1, Instruction({kd.SERVER_LOGITS: server_logits, kd.UNLABELLED_LOGITS: logits}))


def test_held_out_reliability_hides_the_slice_from_clients_and_reports_teacher_figures() -> None:
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.fedgems import FedGEMSServer

    u_x, u_y = _data(30, seed=1)
    server = SelectiveDistillServer(
        build_model("cnn_small", SHAPE, C, seed=0),
        *_data(40),
        ServerDistillConfig(
            epochs=1, batch_size=8, correctness="held_out", held_out_fraction=0.25,
            unlabelled_trust="class_reliability", reliability_on="held_out",
        ),
        seed=3, unlabelled_x=u_x, unlabelled_y=u_y,
    )  # fmt: skip
    held = server.options.held_out_positions
    np.testing.assert_array_equal(server.options.label_free_positions(), held)
    # A client right on the held-out slice only is the reliable one; its answers elsewhere do not count.
    positions = np.arange(70)
    labels = np.concatenate([server.transfer_y.numpy(), u_y.numpy()])
    right = np.eye(C, dtype=np.float32)[labels] * 6
    wrong = np.eye(C, dtype=np.float32)[(labels + 1) % C] * 6
    honest = right.copy()
    honest[:40][~np.isin(np.arange(40), held)] = wrong[:40][~np.isin(np.arange(40), held)]
    stats = server.distill(
        1, {0: (positions, honest), 1: (positions, np.where(np.isin(np.arange(70), held)[:, None], wrong, right))}
    )
    assert stats.extra["teacher_unlabelled_accuracy"] == 1.0  # client 0, right on the slice, decides
    assert 0.0 <= stats.extra["server_unlabelled_accuracy"] <= 1.0
    instruction = FedGEMSServer(server).evaluate_instruction(1, 0)
    np.testing.assert_array_equal(instruction.arrays[kd.LABEL_FREE_POSITIONS], held)


@pytest.mark.parametrize("reliability_on", ["labelled", "held_out"])
def test_clients_are_never_given_the_labels_of_the_held_out_slice(reliability_on: str) -> None:
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.fedgems import FedGEMSServer

    # The server distils the clients' answers on the slice: had they trained on its labels, it would learn them too.
    held_out = _server(correctness="held_out", held_out_fraction=0.25, reliability_on=reliability_on)
    held = held_out.options.held_out_positions
    assert held.size == 10
    instruction = FedGEMSServer(held_out).evaluate_instruction(1, 0)
    np.testing.assert_array_equal(instruction.arrays[kd.LABEL_FREE_POSITIONS], held)
    trained = FedGEMSServer(_server(correctness="train")).evaluate_instruction(1, 0)
    assert kd.LABEL_FREE_POSITIONS not in trained.arrays


def test_a_client_never_learns_the_labels_of_label_free_positions() -> None:
    uniform = np.zeros((20, C), np.float32)
    results = {}
    for name, label_free in (("labels", None), ("label_free", np.arange(20))):
        client = _client()
        client.config = ClientTrainConfig(local_epochs=1, batch_size=16, lr=0.05, distill_epochs=5, epsilon=1.0)
        client.distill(0, uniform, label_free)
        with torch.no_grad():
            results[name] = float(F.cross_entropy(client.model.eval()(client.transfer_x), client.transfer_y))
    assert results["labels"] < results["label_free"]  # with eps=1 the labelled run is pure CE; the other pure KD


def test_held_out_reliability_needs_held_out_correctness() -> None:
    with pytest.raises(ConfigError, match="reliability_on"):
        tiny_config(
            transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="class_reliability", reliability_on="held_out"
        )


def test_teacher_confidence_gate_keeps_only_what_the_clients_are_sure_of() -> None:
    counts = {}
    for gate in (0.0, 0.9):
        server = _server(n=40, unlabelled=20, unlabelled_trust="class_reliability", teacher_min_confidence=gate)
        labels = server.transfer_y.numpy()
        sure = np.eye(C, dtype=np.float32)[np.zeros(20, dtype=np.int64)] * 10  # softmax ~1 on class 0
        unsure = np.zeros((20, C), np.float32)  # uniform: top probability 1/C
        answers = np.concatenate(
            [np.eye(C, dtype=np.float32)[labels] * 10, np.where(np.arange(20)[:, None] < 5, sure, unsure)]
        )
        counts[gate] = server.distill(1, {0: (np.arange(60), answers)}).extra["n_unlabelled"]
    assert counts == {0.0: 20, 0.9: 5}
    with pytest.raises(ConfigError, match="teacher_min_confidence"):
        tiny_config(
            transfer={"labelled": 60, "unlabelled": 40},
            unlabelled_trust="class_reliability",
            teacher_min_confidence=1.5,
        )


def test_fusion_weights_follow_the_clients_that_taught() -> None:
    from fl_kd.kd.fedgems import FedGEMSServer

    server = _server(n=40, unlabelled=20, unlabelled_trust="class_reliability")
    labels = server.transfer_y.numpy()
    right = np.eye(C, dtype=np.float32)[labels] * 6
    wrong = np.eye(C, dtype=np.float32)[(labels + 1) % C] * 6
    guesses = np.eye(C, dtype=np.float32)[np.zeros(20, dtype=np.int64)] * 6
    role = FedGEMSServer(server)
    positions = np.arange(60)
    role.aggregate(1, {0: {"positions": positions, "logits": np.concatenate([right, guesses])},
                       1: {"positions": positions, "logits": np.concatenate([wrong, guesses])}})  # fmt: skip
    shares = role.fusion_weights()
    assert set(shares) == {0, 1} and sum(shares.values()) == pytest.approx(1.0)
    assert shares[0] > 0.9 > 0.1 > shares[1]  # the always-wrong client taught (almost) nothing


def test_personal_client_keeps_the_shared_model_undisturbed_and_fine_tunes_a_copy() -> None:
    """``client_personal``: the shared model is the one without fine-tuning, the personal one the fine-tuned one,
    bit for bit; personalised accuracy is the personal model's; the state carries both."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    wrong = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))
    plain, finetuned = FedGEMSClient(_client()), FedGEMSClient(_client(), finetune_epochs=2)
    personal = FedGEMSClient(_client(), finetune_epochs=2, personal=True)
    for role in (plain, finetuned, personal):
        role.receive(0, Instruction({kd.SERVER_LOGITS: wrong}))
    assert personal.personal_model is not None

    assert _same_weights(personal.client.model, plain.client.model)
    assert _same_weights(personal.personal_model, finetuned.client.model)
    assert not _same_weights(personal.personal_model, personal.client.model)
    x, y = personal.client.train_x, personal.client.train_y
    assert personal.evaluate_personal(x, y) == finetuned.evaluate(x, y)
    assert personal.evaluate(x, y) == plain.evaluate(x, y)
    assert plain.evaluate_personal(x, y) == plain.evaluate(x, y)  # no personal model: the model itself

    state = personal.state_dict()
    assert any(k.startswith(FedGEMSClient.PERSONAL) for k in state) and len(state) == 2 * len(plain.state_dict()) + 1
    restored = FedGEMSClient(_client(), finetune_epochs=2, personal=True)
    restored.load_state_dict(state)
    assert restored.personal_model is not None
    assert _same_weights(restored.client.model, personal.client.model)
    assert _same_weights(restored.personal_model, personal.personal_model)
    with pytest.raises(ValueError, match="finetune_epochs"):
        FedGEMSClient(_client(), personal=True)
    with pytest.raises(ConfigError, match="client_personal"):
        tiny_config(client_personal=True)


def test_client_weight_average_is_shown_on_both_test_sets_and_travels_in_the_state() -> None:
    """``client_tail_average``: the role answers and is evaluated (global and own test sets) with the average of the
    client's weights; its state carries the average under ``AVERAGE``."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    teacher = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))
    role = FedGEMSClient(_client(), finetune_epochs=1, tail_average=0.5)
    role.receive(0, Instruction({kd.SERVER_LOGITS: teacher}))
    client = role.client
    assert client.average is not None and int(client.average.n_averaged) > 1
    x, y = client.train_x, client.train_y
    shown = accuracy(client.average.module, x, y)
    assert role.evaluate(x, y) == role.evaluate_personal(x, y) == shown
    state = role.state_dict()
    assert any(k.startswith(FedGEMSClient.AVERAGE) for k in state)
    restored = FedGEMSClient(_client(), finetune_epochs=1, tail_average=0.5)
    restored.load_state_dict(state)
    assert restored.client.average is not None
    averages = restored.client.average.state_dict(), client.average.state_dict()
    assert all(torch.equal(mine, averages[1][k]) for k, mine in averages[0].items())
    assert FedGEMSClient(_client()).client.average is None
    with pytest.raises(ConfigError, match="client_tail_average"):
        tiny_config(client_tail_average=1.5)


@pytest.mark.parametrize("prox", [None, 0.1])
def test_personal_model_with_weight_average_leaves_the_shared_average_alone(prox: float | None) -> None:
    """``client_personal`` with ``client_tail_average``: the shared model and its average are those of a client
    that does not fine-tune, bit for bit; the personal model is the average of the fine-tuning's last steps."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    teacher = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))
    shared_only = FedGEMSClient(_client(), tail_average=0.5)
    both = FedGEMSClient(_client(), finetune_epochs=2, personal=True, personal_prox=prox, tail_average=0.5)
    for round in (0, 1):  # the second round starts a kept personal model from itself
        for role in (shared_only, both):
            role.receive(round, Instruction({kd.SERVER_LOGITS: teacher}))

    assert both.client.average is not None and shared_only.client.average is not None
    assert _same_weights(both.client.model, shared_only.client.model)
    assert _same_weights(both.client.average, shared_only.client.average)
    assert both.personal_model is not None and not _same_weights(both.personal_model, both.client.shown_model)
    x, y = both.client.train_x, both.client.train_y
    assert both.evaluate(x, y) == shared_only.evaluate(x, y)
    assert both.evaluate_personal(x, y) == accuracy(both.personal_model, x, y)
    restored = FedGEMSClient(_client(), finetune_epochs=2, personal=True, personal_prox=prox, tail_average=0.5)
    restored.load_state_dict(both.state_dict())
    assert restored.personal_model is not None and restored.client.average is not None
    assert _same_weights(restored.personal_model, both.personal_model)
    assert _same_weights(restored.client.average, both.client.average)
    if prox is None:  # a copy fine-tuned afresh: what the one model's fine-tuning shows in its first round
        first = FedGEMSClient(_client(), finetune_epochs=2, personal=True, tail_average=0.5)
        reference = FedGEMSClient(_client(), finetune_epochs=2, tail_average=0.5)
        for role in (first, reference):
            role.receive(0, Instruction({kd.SERVER_LOGITS: teacher}))
        assert first.personal_model is not None and reference.client.average is not None
        assert _same_weights(first.personal_model, reference.client.average.module)


def test_kept_distilled_model_is_scored_globally_and_changes_nothing_else() -> None:
    """``client_keep_distilled``: the global test set scores the model as distilled (what a client that does not
    fine-tune shows), while training, answers and the own test set are those of the same client without the copy."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    teacher = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))
    kept = FedGEMSClient(_client(), finetune_epochs=2, tail_average=0.5, keep_distilled=True)
    plain = FedGEMSClient(_client(), finetune_epochs=2, tail_average=0.5)
    unfinetuned = FedGEMSClient(_client(), tail_average=0.5)
    x, y = kept.client.train_x, kept.client.train_y
    assert kept.evaluate(x, y) == plain.evaluate(x, y)  # nothing distilled yet: the model itself
    for role in (kept, plain, unfinetuned):
        role.receive(0, Instruction({kd.SERVER_LOGITS: teacher}))

    assert kept.distilled_model is not None
    assert _same_weights(kept.distilled_model, unfinetuned.client.shown_model)
    assert _same_weights(kept.client.model, plain.client.model)
    assert _same_weights(kept.client.shown_model, plain.client.shown_model)
    assert not _same_weights(kept.distilled_model, kept.client.shown_model)
    assert kept.evaluate(x, y) == unfinetuned.evaluate(x, y)
    assert kept.evaluate_personal(x, y) == plain.evaluate_personal(x, y) == plain.evaluate(x, y)
    query = Instruction({kd.POSITIONS: np.arange(5)})
    assert np.array_equal(kept.train(1, query).arrays[kd.LOGITS], plain.train(1, query).arrays[kd.LOGITS])

    state = kept.state_dict()
    assert any(k.startswith(FedGEMSClient.DISTILLED) for k in state)
    restored = FedGEMSClient(_client(), finetune_epochs=2, tail_average=0.5, keep_distilled=True)
    restored.load_state_dict(state)
    assert restored.distilled_model is not None and _same_weights(restored.distilled_model, kept.distilled_model)
    assert _same_weights(restored.client.model, kept.client.model)
    for bad in ({"finetune_epochs": 0}, {"finetune_epochs": 1, "personal": True}):
        with pytest.raises(ValueError, match="keep_distilled"):
            FedGEMSClient(_client(), keep_distilled=True, **bad)  # type: ignore[arg-type]  # mypy joins the two dicts to dict[str, int]
    with pytest.raises(ConfigError, match="client_keep_distilled"):
        tiny_config(client_keep_distilled=True)
    with pytest.raises(ConfigError, match="client_keep_distilled"):
        tiny_config(client_keep_distilled=True, client_finetune_epochs=1, client_personal=True)


def test_kept_personal_model_continues_across_rounds_pulled_towards_the_shared_one() -> None:
    """``client_personal_prox``: round 0 as the copy; later rounds go on from the personal model (not a fresh
    copy), and a larger pull keeps it nearer the shared model; the round count travels in the state."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    teachers = [np.tile(np.eye(C, dtype=np.float32)[k] * 8, (20, 1)) for k in (0, 1)]
    copy_role = FedGEMSClient(_client(), finetune_epochs=1, personal=True)
    kept = {
        prox: FedGEMSClient(_client(), finetune_epochs=1, personal=True, personal_prox=prox) for prox in (0.0, 10.0)
    }

    def params(model: torch.nn.Module | None) -> torch.Tensor:
        assert model is not None
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    def same(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
        return torch.equal(params(a), params(b))

    for round, teacher in enumerate(teachers):
        for role in (copy_role, *kept.values()):
            role.receive(round, Instruction({kd.SERVER_LOGITS: teacher}))
        assert all(role.personal_rounds == round + 1 for role in kept.values())
        assert all(same(role.client.model, copy_role.client.model) for role in kept.values())  # shared untouched
        if round == 0:
            assert all(same(role.personal_model, copy_role.personal_model) for role in kept.values())
    assert not any(same(role.personal_model, copy_role.personal_model) for role in kept.values())
    shared = params(copy_role.client.model)
    distance = {prox: float((params(role.personal_model) - shared).norm()) for prox, role in kept.items()}
    assert distance[10.0] < distance[0.0]

    state = kept[10.0].state_dict()
    restored = FedGEMSClient(_client(), finetune_epochs=1, personal=True, personal_prox=10.0)
    restored.load_state_dict(state)
    assert restored.personal_rounds == 2 and same(restored.personal_model, kept[10.0].personal_model)
    with pytest.raises(ValueError, match="personal_prox"):
        FedGEMSClient(_client(), finetune_epochs=1, personal_prox=1.0)
    with pytest.raises(ConfigError, match="client_personal_prox"):
        tiny_config(client_finetune_epochs=1, client_personal_prox=1.0)
    with pytest.raises(ConfigError, match="client_personal_prox"):
        tiny_config(client_finetune_epochs=1, client_personal=True, client_personal_prox=-1.0)


def test_personal_prior_adds_the_clients_own_label_frequencies_to_the_logits() -> None:
    """``client_personal_prior``: own-distribution predictions are argmax(logits + log smoothed label frequencies);
    a client whose data hold one class predicts that class on its own test set; global accuracy is untouched."""
    from fl_kd.kd.training import predict_logits

    client = _client()
    client.train_y = torch.zeros_like(client.train_y)  # private data of class 0 only
    role, plain = FedGEMSClient(client, personal_prior=True), FedGEMSClient(_client())
    assert role.log_prior is not None and role.log_prior.shape == (C,)
    expected = torch.log(torch.tensor([65.0] + [1.0] * (C - 1)) / (64 + C))
    assert torch.allclose(role.log_prior, expected.float())
    x, y = client.transfer_x, client.transfer_y
    logits = predict_logits(client.model, x)
    manual = float(((logits + role.log_prior).argmax(dim=1) == y).double().mean())
    assert role.evaluate_personal(x, y) == manual
    assert role.evaluate(x, y) == plain.evaluate(x, y)  # the prior only touches the own-distribution figure
    own = torch.zeros_like(y)
    assert role.evaluate_personal(x, own) > role.evaluate(x, own)
    # The config option reaches the client role the runtimes build.
    from fl_kd.kd.federation import build_federation
    from fl_kd.kd.fedgems.parties import build_client_role

    cfg = tiny_config(rounds=1, client_personal_prior=True)
    assert build_client_role(cfg, build_federation(cfg), 0).log_prior is not None
    assert run_inprocess(cfg).rounds[0]["client_pacc_mean"] >= 0.0  # and the run goes through end to end
    assert build_client_role(tiny_config(rounds=1), build_federation(tiny_config(rounds=1)), 0).log_prior is None


def test_personal_clients_run_end_to_end_and_report_their_personal_accuracy() -> None:
    cfg = tiny_config(rounds=2, client_finetune_epochs=1, client_personal=True)
    rows = run_inprocess(cfg).rounds
    assert len(rows) == 2 and all(0.0 <= row["client_pacc_mean"] <= 1.0 for row in rows)
    kept = run_inprocess(
        tiny_config(rounds=2, client_finetune_epochs=1, client_personal=True, client_personal_prox=0.1)
    )
    # Same shared models and server (the personal model never answers); round 2's personal models differ.
    assert [r["server_acc"] for r in kept.rounds] == [r["server_acc"] for r in rows]
    assert [r["client_acc_mean"] for r in kept.rounds] == [r["client_acc_mean"] for r in rows]
    assert kept.rounds[0]["client_pacc_mean"] == rows[0]["client_pacc_mean"]
    assert kept.rounds[1]["client_pacc_mean"] != rows[1]["client_pacc_mean"]


def test_every_client_option_reaches_the_client_role_the_runtimes_build() -> None:
    """Both runtimes build clients through ``build_client_role``; a setting it dropped would change no test of
    the role itself, and Flower-against-in-process tests would still agree."""
    from fl_kd.kd.federation import build_federation
    from fl_kd.kd.fedgems.parties import build_client_role

    def role(**settings: object) -> FedGEMSClient:
        cfg = tiny_config(rounds=1, **settings)
        return build_client_role(cfg, build_federation(cfg), 0)

    plain = role()
    assert (plain.finetune_epochs, plain.anchor, plain.keep_distilled, plain.personal_model) == (0, 0.0, False, None)
    assert plain.client.average is None and plain.personal_prox is None
    tuned = role(client_finetune_epochs=2, client_keep_distilled=True, client_anchor=0.5, client_tail_average=0.25)
    assert (tuned.finetune_epochs, tuned.anchor, tuned.keep_distilled) == (2, 0.5, True)
    assert tuned.client.average is not None and tuned.client.average_tail == 0.25
    personal = role(client_finetune_epochs=1, client_personal=True, client_personal_prox=0.1)
    assert personal.personal_model is not None and personal.personal_prox == 0.1


def test_selection_settings_are_declared_once_and_all_reach_the_server() -> None:
    from fl_kd.kd.fedgems.server_config import SelectionConfig

    names = {field.name for field in fields(SelectionConfig)}
    assert names <= {field.name for field in fields(FedGEMSConfig)}
    assert names <= {field.name for field in fields(ServerDistillConfig)}
    learned = FedGEMSConfig(
        correctness="held_out", held_out_fraction=0.3, held_out_server_labels=True, distill_correct=True,
        unlabelled_trust="learned", reliability_on="held_out", teacher_min_confidence=0.5, learned_weight_decay=0.1,
        learned_prob_floor=0.01, learned_trim=1, unlabelled_per_round=7, unlabelled_cache=3, canaries=5, canary_z=2.0,
        canary_burst_z=4.0, consensus_z=2.5, consensus_margin=0.05, consensus_confidence=True, consensus_burst_z=3.5,
        consensus_raise=True, consensus_raise_margin=0.08,
    )  # fmt: skip
    reliability = FedGEMSConfig(unlabelled_trust="class_reliability", reliability_power=2.0)  # read by it alone
    defaults = ServerDistillConfig()
    for strategy, given in ((learned, names - {"reliability_power"}), (reliability, {"reliability_power"})):
        server = strategy.server_config()
        assert {name: getattr(server, name) for name in names} == {name: getattr(strategy, name) for name in names}
        assert all(getattr(strategy, name) != getattr(defaults, name) for name in given)  # each one is carried over
    # One check for both, naming the key as each user writes it.
    with pytest.raises(ConfigError, match=r"^strategy\.canaries needs strategy\.unlabelled_trust"):
        FedGEMSConfig(canaries=2)
    with pytest.raises(ConfigError, match=r"^canaries needs unlabelled_trust"):
        ServerDistillConfig(canaries=2)
    with pytest.raises(ConfigError, match=r"^strategy\.learned_trim must be a whole number"):
        FedGEMSConfig(learned_trim=1.5)  # type: ignore[arg-type]
    assert ServerDistillConfig(unlabelled_per_round=np.int64(5)).unlabelled_per_round == 5  # type: ignore[arg-type]  # a numpy count is whole


def test_client_anchor_keeps_the_servers_knowledge_through_local_training() -> None:
    """``client_anchor``: local training adds KD towards the server's last logits, so the client forgets less of
    them; at 0 local training is cross-entropy alone, bit for bit."""
    from fl_kd.kd import protocol as kd
    from fl_kd.kd.roles import Instruction

    server = np.tile(np.eye(C, dtype=np.float32)[0] * 8, (20, 1))  # the server's knowledge: class 0 everywhere
    query = Instruction({kd.POSITIONS: np.arange(20)})
    roles = {weight: FedGEMSClient(_client(), anchor=weight) for weight in (0.0, 2.0)}
    plain = FedGEMSClient(_client())
    for role in (*roles.values(), plain):
        role.receive(0, Instruction({kd.SERVER_LOGITS: server}))
    assert roles[0.0].anchor_set is None and plain.anchor_set is None
    kept = roles[2.0].anchor_set
    assert (
        kept is not None and torch.equal(kept[0], torch.arange(20)) and torch.equal(kept[1], torch.from_numpy(server))
    )
    target = F.log_softmax(torch.from_numpy(server), dim=1)
    gaps, answers = {}, {}
    for name, role in (("plain", plain), *roles.items()):
        for round in range(1, 4):  # three rounds of local training on the private data, no distillation between
            answers[name] = torch.from_numpy(role.train(round, query).arrays[kd.LOGITS])
        student = F.log_softmax(answers[name], dim=1)
        gaps[name] = float(F.kl_div(student, target, reduction="batchmean", log_target=True))
    assert torch.equal(answers[0.0], answers["plain"])
    assert gaps[2.0] < 0.5 * gaps["plain"]
    # A message the client refuses (unlabelled positions outside the unlabelled part) leaves the kept knowledge alone.
    bad = {
        kd.SERVER_LOGITS: server[::-1].copy(),
        kd.UNLABELLED_POSITIONS: np.arange(2),
        kd.UNLABELLED_LOGITS: server[:2],
    }
    with pytest.raises(ValueError, match="unlabelled part"):
        roles[2.0].receive(5, Instruction(bad))
    assert roles[2.0].anchor_set is not None and torch.equal(roles[2.0].anchor_set[1], kept[1])
    restored = FedGEMSClient(_client(), anchor=2.0)
    restored.load_state_dict(roles[2.0].state_dict())
    assert restored.anchor_set is not None and torch.equal(restored.anchor_set[1], kept[1])
    with pytest.raises(ValueError, match="anchor"):
        FedGEMSClient(_client(), anchor=-1.0)
    with pytest.raises(ConfigError, match="client_anchor"):
        tiny_config(client_anchor=-0.5)


@pytest.mark.parametrize("cache", [0, 3])
def test_a_gate_that_keeps_no_unlabelled_sample_leaves_the_server_as_the_labelled_part_does(cache: int) -> None:
    # Every unlabelled answer is uniform, so a 0.9 gate keeps none: the round must be the labelled part's alone,
    # not an extra optimiser step on an empty batch (momentum and weight decay) with a NaN loss.
    gated = _server(n=40, unlabelled=20, unlabelled_trust="class_reliability", teacher_min_confidence=0.9,
                    unlabelled_cache=cache)  # fmt: skip
    alone = _server(n=40)
    labels = gated.transfer_y.numpy()
    answers = np.concatenate([np.eye(C, dtype=np.float32)[labels] * 10, np.zeros((20, C), np.float32)])
    stats = gated.distill(1, {0: (np.arange(60), answers)})
    alone.distill(1, {0: (np.arange(40), answers[:40])})
    assert stats.extra["n_unlabelled"] == 0 and "unlabelled_loss" not in stats.extra
    for ours, theirs in zip(gated.model.state_dict().values(), alone.model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_a_probability_floor_the_classes_cannot_hold_stops_the_server_before_round_one() -> None:
    learned = {"unlabelled_trust": "learned", "correctness": "held_out", "reliability_on": "held_out"}
    # 0.3 is below 1 (the config's own bound) but above 1/C = 0.25: every class could not be floored at 0.3.
    with pytest.raises(ValueError, match=r"learned_prob_floor must lie in \[0, 1/C\) = \[0, 0.25\)"):
        _server(n=40, unlabelled=20, learned_prob_floor=0.3, **learned)
    assert _server(n=40, unlabelled=20, learned_prob_floor=0.2, **learned).options.config.learned_prob_floor == 0.2
