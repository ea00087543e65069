"""The in-process runners run with one torch thread, as every Flower app does, whatever the caller set; CPU kernels
split their sums by thread count, so another count changes the last bits of every figure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fl_kd.kd.baselines import run_local_only, run_transfer_only_server
from fl_kd.kd.runner import run_inprocess
from fl_kd.vfl import run_vfl
from tests.kd_configs import tiny_config


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_threads")
def test_the_runners_use_one_thread_and_give_the_caller_its_own_back() -> None:
    seen: list[int] = []

    def note(_: Any) -> None:
        seen.append(torch.get_num_threads())

    cfg = tiny_config(rounds=1)
    run_inprocess(cfg, on_round=note)
    run_local_only(cfg, on_round=note)
    run_transfer_only_server(cfg, on_round=note)
    run_vfl({"seed": 3, "attack": {}, "training": {"epochs": 1, "batch_size": 16}}, report=note)
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
