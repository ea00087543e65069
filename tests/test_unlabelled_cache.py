"""``strategy.unlabelled_cache``: the server keeps the clients' fused teacher per unlabelled sample and distils those
of the last rounds with this round's; 0 is today's algorithm, canaries never enter, a resumed run distils alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from fl_kd.config import ConfigError
from fl_kd.kd.fedgems import SelectiveDistillServer, ServerDistillConfig
from fl_kd.kd.fedgems.teacher_cache import NEVER, TeacherCache
from tests.kd_configs import learned_trust_server, resumed_from_checkpoint, tiny_config


def test_the_cache_keeps_the_newest_teacher_and_forgets_beyond_the_horizon() -> None:
    cache = TeacherCache(6, 3)
    assert cache.num_filled == 0 and cache.select(1, 5)[0].numel() == 0
    cache.update(torch.tensor([0, 2, 4]), torch.ones(3, 3), round=1)
    cache.update(torch.tensor([2, 5]), torch.full((2, 3), 2.0), round=2)
    index, logits = cache.select(2, horizon=1)
    assert index.tolist() == [0, 2, 4, 5] and cache.num_filled == 4
    assert logits[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0]  # sample 2 answered again: the new teacher
    assert cache.select(2, horizon=0)[0].tolist() == [2, 5]
    assert cache.select(3, horizon=1)[0].tolist() == [2, 5]  # round 1's teachers aged out
    cache.forget(torch.tensor([2]))
    assert cache.select(2, horizon=1)[0].tolist() == [0, 4, 5] and cache.num_filled == 3
    assert cache.rounds[2] == NEVER
    with pytest.raises(ValueError, match="logits"):
        cache.update(torch.tensor([1]), torch.ones(2, 3), round=3)
    with pytest.raises(ValueError, match="non-finite"):
        cache.update(torch.tensor([1]), torch.full((1, 3), float("nan")), round=3)


def test_the_cache_state_round_trips_and_refuses_another_shape() -> None:
    cache = TeacherCache(5, 2)
    cache.update(torch.tensor([1, 3]), torch.randn(2, 2), round=4)
    restored = TeacherCache(5, 2)
    restored.load_state_dict(cache.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.select(4, 0), cache.select(4, 0), strict=True))
    assert torch.equal(restored.rounds, cache.rounds)
    assert restored.rounds.tolist() == [NEVER, 4, NEVER, 4, NEVER]
    answered = TeacherCache(5, 2)
    answered.update(torch.tensor([1, 3]), torch.randn(2, 2), round=4,
                    block=_block([1, 3], [2], torch.randn(1, 2, 2), [[False, True]]))  # fmt: skip
    restored.load_state_dict(answered.state_dict())
    assert restored.blocks[4]["available"].tolist() == [[False, True]]
    assert restored.blocks[4]["members"].tolist() == [True]
    beyond = answered.state_dict()
    beyond["blocks"][4]["indices"] = torch.tensor([1, 9])  # a block about samples this cache does not have
    with pytest.raises(ValueError, match="answer block indices"):
        TeacherCache(5, 2).load_state_dict(beyond)
    with pytest.raises(ValueError, match="shapes"):
        TeacherCache(4, 2).load_state_dict(cache.state_dict())
    stale = cache.state_dict()
    stale["rounds"][0] = 2  # a stamp where no teacher is cached
    with pytest.raises(ValueError, match="where a teacher is cached"):
        TeacherCache(5, 2).load_state_dict(stale)


def _block(indices: list[int], clients: list[int], answers: torch.Tensor, available: list[list[bool]]) -> dict:
    return {
        "indices": torch.tensor(indices),
        "clients": torch.tensor(clients),
        "answers": answers,
        "available": torch.tensor(available),
        "scale": torch.tensor(1.0),  # a fusion parameter: handed to the fusion as it was stored
    }


def _mean_of_answers(
    params: Mapping[str, torch.Tensor], members: torch.Tensor, answers: torch.Tensor, available: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in fusion: the mean of the members' answers; kept where any member answered."""
    answers, available = answers[members], available[members]
    weights = available.float().unsqueeze(-1)
    return params["scale"] * (answers * weights).sum(0) / weights.sum(0).clamp_min(1), available.any(dim=0)


def test_a_caught_client_is_fused_out_of_every_cached_teacher_it_answered() -> None:
    cache = TeacherCache(6, 2)
    # Round 1: client 7 answered samples 0 and 1 with [4, 0], client 8 samples 0, 1 and 2 with [0, 2].
    answers = torch.tensor([[[4.0, 0.0]] * 3, [[0.0, 2.0]] * 3])
    cache.update(torch.tensor([0, 1, 2]), torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 2.0]]), round=1,
                 block=_block([0, 1, 2], [7, 8], answers, [[True, True, False], [True, True, True]]))  # fmt: skip
    # Round 2: sample 1 is answered again, by client 8 alone.
    cache.update(torch.tensor([1, 3]), torch.tensor([[0.0, 2.0]] * 2), round=2,
                 block=_block([1, 3], [8], torch.tensor([[[0.0, 2.0]] * 2]), [[True, True]]))  # fmt: skip
    # Only sample 0 still holds a teacher client 7 had a part in: fused again from client 8 alone, round kept.
    assert cache.refuse_without([7, 99], _mean_of_answers) == (1, 0)
    index, logits = cache.select(2, horizon=1)
    assert index.tolist() == [0, 1, 2, 3] and logits[0].tolist() == [0.0, 2.0] and cache.rounds[0] == 1
    assert cache.refuse_without([7], _mean_of_answers) == (0, 0)  # nothing of it is left
    # A teacher with nobody left to back it is dropped.
    assert cache.refuse_without([8], _mean_of_answers) == (4, 4) and cache.num_filled == 0
    # Blocks go once their round is out of the horizon; a block that does not fit its teachers is refused.
    assert sorted(cache.blocks) == [1, 2] and cache.select(3, horizon=1)[0].numel() == 0
    assert sorted(cache.blocks) == [2]
    with pytest.raises(ValueError, match="answer block"):
        cache.update(torch.tensor([4]), torch.ones(1, 2), round=3,
                     block=_block([4], [5], torch.ones(1, 2, 2), [[True, True]]))  # fmt: skip
    assert cache.num_filled == 0  # a refused update stores nothing


def _answers(server: SelectiveDistillServer, round: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Two clients on the whole labelled part and ``round``'s unlabelled subset: one right, one noisy."""
    num = server.num_transfer
    positions = np.concatenate([np.arange(num), num + server.options.unlabelled_positions(round)])
    assert server.options.unlabelled_y is not None
    labels = np.concatenate([server.transfer_y.numpy(), server.options.unlabelled_y.numpy()])[positions]
    right = np.eye(4, dtype=np.float32)[labels] * 4
    noise = np.random.default_rng(round).normal(size=right.shape).astype(np.float32)
    return {0: (positions, right), 1: (positions, right * 0.5 + noise)}


def _weights(server: SelectiveDistillServer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in server.model.state_dict().items()}


def _two_rounds(**settings: Any) -> tuple[SelectiveDistillServer, list[dict[str, float | int]]]:
    server = learned_trust_server(60, **settings)
    extras = [server.distill(round, _answers(server, round)).extra for round in (1, 2)]
    return server, extras


def test_cache_zero_takes_todays_path_and_a_cache_with_nothing_stale_changes_nothing() -> None:
    plain, plain_extras = _two_rounds()
    assert plain.options.teacher_cache is None and all("unlabelled_distilled" not in e for e in plain_extras)
    # Every sample answered every round: the cache only ever holds this round's teacher, so the weights match.
    everything, _ = _two_rounds(unlabelled_cache=0, unlabelled_per_round=0)
    cached, cached_extras = _two_rounds(unlabelled_cache=3, unlabelled_per_round=0)
    assert [e["unlabelled_distilled"] for e in cached_extras] == [60, 60]
    for name, value in _weights(everything).items():
        assert torch.equal(value, _weights(cached)[name]), name
    # Round 1 has no earlier teacher: with a subset per round, cache or not, the same weights after it.
    first = [learned_trust_server(60, unlabelled_per_round=20, unlabelled_cache=c) for c in (0, 4)]
    for server in first:
        server.distill(1, _answers(server, 1))
    for name, value in _weights(first[0]).items():
        assert torch.equal(value, _weights(first[1])[name]), name


def test_a_cache_distils_earlier_teachers_too_until_they_age_out() -> None:
    server = learned_trust_server(60, unlabelled_per_round=20, unlabelled_cache=1)
    subsets = [set(server.options.unlabelled_positions(round).tolist()) for round in (1, 2, 3)]
    distilled = [server.distill(round, _answers(server, round)).extra for round in (1, 2, 3)]
    assert [e["n_unlabelled"] for e in distilled] == [20, 20, 20]
    assert distilled[0]["unlabelled_distilled"] == 20
    assert distilled[1]["unlabelled_distilled"] == len(subsets[0] | subsets[1]) > 20
    assert distilled[2]["unlabelled_distilled"] == len(subsets[1] | subsets[2])  # round 1's teachers aged out
    cache = server.options.teacher_cache
    assert cache is not None and set(torch.nonzero(cache.rounds == 3).reshape(-1).tolist()) == subsets[2]
    plain = learned_trust_server(60, unlabelled_per_round=20)
    assert plain.distill(1, _answers(plain, 1)).extra["n_unlabelled"] == 20


def test_a_teacher_the_gate_drops_when_answered_again_leaves_the_cache() -> None:
    server = learned_trust_server(60, unlabelled_cache=2, teacher_min_confidence=0.6)
    server.distill(1, _answers(server, 1))
    cache = server.options.teacher_cache
    assert cache is not None
    kept_in_round_1 = cache.rounds == 1
    assert int(kept_in_round_1.sum()) > 0
    # Round 2: both clients still answer the labelled part, but are unsure (uniform) on every unlabelled sample.
    answers = _answers(server, 2)
    num = server.num_transfer
    unsure = {
        k: (pos, np.where((pos >= num)[:, None], 0.0, values).astype(np.float32))
        for k, (pos, values) in answers.items()
    }
    stats = server.distill(2, unsure)
    assert stats.extra["n_unlabelled"] < 60
    # No sample keeps round 1's teacher: each was answered again, so it holds round 2's teacher or none.
    assert not bool((cache.rounds == 1).any())
    assert int((cache.rounds == 2).sum()) == stats.extra["n_unlabelled"] == stats.extra["unlabelled_distilled"]


def test_canaries_never_enter_the_cache() -> None:
    server = learned_trust_server(60, canaries=20, unlabelled_cache=2)
    for round in (1, 2):
        stats = server.distill(round, _answers(server, round))
        assert stats.extra["unlabelled_distilled"] == 40  # 60 unlabelled samples, 20 of them canaries
    assert server.options.canaries is not None and server.options.teacher_cache is not None
    canary = torch.from_numpy(server.options.canaries.mask)
    assert (server.options.teacher_cache.rounds[canary] == NEVER).all()
    assert (server.options.teacher_cache.rounds[~canary] == 2).all()


@pytest.mark.parametrize("trust", ["learned", "class_reliability"])
def test_a_client_the_canaries_catch_late_is_fused_out_of_what_it_taught_before(trust: str) -> None:
    settings = {"canaries": 20, "unlabelled_per_round": 30, "unlabelled_cache": 3, "unlabelled_trust": trust}
    server = learned_trust_server(60, **settings)
    screen, cache = server.options.canaries, server.options.teacher_cache
    assert screen is not None and cache is not None and server.options.unlabelled_y is not None
    num, truth = server.num_transfer, server.options.unlabelled_y

    def answers(round: int, caught: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Client 0 right everywhere; client 1 right on the labelled part and, until it is ``caught``, on the
        canaries too, and sure of the next class on every other unlabelled sample."""
        honest = _answers(server, round)[0]
        positions, unlabelled = honest[0], honest[0] >= num
        lies = np.eye(4, dtype=np.float32)[(honest[1].argmax(axis=1) + 1) % 4] * 8
        checked = np.zeros_like(unlabelled)
        checked[unlabelled] = screen.mask[positions[unlabelled] - num]
        lying = unlabelled & (caught | ~checked)
        return {0: honest, 1: (positions, np.where(lying[:, None], lies, honest[1]))}

    first = server.distill(1, answers(1, caught=False))
    assert first.extra["canary_screened"] == 0
    taught = torch.nonzero(cache.rounds == 1).reshape(-1)
    assert taught.numel() == 30 - int(screen.mask[server.options.unlabelled_positions(1)].sum())
    wrong_before = int((cache.knowledge.get(taught).argmax(dim=1) != truth[taught]).sum())
    assert wrong_before > 0  # the lies made it into the cache
    second = server.distill(2, answers(2, caught=True))
    assert second.extra["canary_screened"] == 1
    # Every round-1 teacher was fused again from client 0 alone: none is dropped, none is wrong any more.
    assert (second.extra["canary_refused"], second.extra["canary_purged"]) == (taught.numel(), 0)
    still = torch.nonzero(cache.rounds == 1).reshape(-1)
    assert still.numel() > 0 and bool((cache.knowledge.get(still).argmax(dim=1) == truth[still]).all())
    assert cache.blocks[1]["members"].tolist() == [True, False]
    # Fused again means fitted again: the teachers are those of a round 1 that client 1 never took part in (leaving
    # it out of a combiner fitted with it would not give these; per-class precision is the client's own alone).
    alone = learned_trust_server(60, **settings)
    alone.distill(1, {0: answers(1, caught=False)[0]})
    assert alone.options.teacher_cache is not None
    assert torch.allclose(cache.knowledge.get(still), alone.options.teacher_cache.knowledge.get(still), atol=1e-6)


def test_the_cache_survives_a_checkpoint_so_a_resumed_server_distils_alike() -> None:
    settings = {"unlabelled_per_round": 20, "unlabelled_cache": 2, "canaries": 10}  # canaries: answer blocks too
    server = learned_trust_server(60, **settings)
    for round in (1, 2):
        server.distill(round, _answers(server, round))
    resumed = resumed_from_checkpoint(server, lambda: learned_trust_server(60, **settings))
    assert resumed.options.teacher_cache is not None and server.options.teacher_cache is not None
    assert torch.equal(resumed.options.teacher_cache.rounds, server.options.teacher_cache.rounds)
    saved, loaded = server.options.teacher_cache.blocks, resumed.options.teacher_cache.blocks
    assert sorted(saved) == sorted(loaded) == [1, 2]
    assert all(torch.equal(saved[r][key], loaded[r][key]) for r in saved for key in saved[r])
    assert server.distill(3, _answers(server, 3)).extra == resumed.distill(3, _answers(resumed, 3)).extra
    for name, value in _weights(server).items():
        assert torch.equal(value, _weights(resumed)[name]), name


def test_the_cache_needs_unlabelled_trust_and_a_whole_number_of_rounds() -> None:
    with pytest.raises(ValueError, match="unlabelled_trust"):
        ServerDistillConfig(unlabelled_cache=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="unlabelled_cache"):
            ServerDistillConfig(unlabelled_trust="class_reliability", unlabelled_cache=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unlabelled_cache"):
        tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_cache=2)
    with pytest.raises(ConfigError, match="unlabelled_cache"):
        tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="class_reliability",
                    unlabelled_cache=-1)  # fmt: skip
    config = tiny_config(transfer={"labelled": 60, "unlabelled": 40}, unlabelled_trust="class_reliability",
                         unlabelled_cache=3)  # fmt: skip
    assert config.strategy.server_config().unlabelled_cache == 3  # type: ignore[attr-defined]
