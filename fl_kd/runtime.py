"""How a run executes on this machine: the ``simulation`` config group, and the one torch thread of every run."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from fl_kd.config import ConfigError, check_choice, check_range

#: ``flwr_run``: a Flower simulation through ``flwr run`` (the supported path); ``inprocess``: the core's own
#: loop, without Flower (the reference the Flower run must match bit for bit).
BACKENDS = ("flwr_run", "inprocess")


@dataclass
class SimulationConfig:
    """Runtime of a simulated federation.

    Attributes
    ----------
    backend : str (default: "flwr_run")
        One of :data:`BACKENDS`.
    num_cpus_per_client : int (default: 1)
        Ray CPUs per ClientApp; with ``num_cpus=2`` two ClientApps run at a time.
    num_cpus : int (default: 2)
        Ray CPUs in all.
    """

    backend: str = "flwr_run"
    num_cpus_per_client: int = 1
    num_cpus: int = 2

    def __post_init__(self) -> None:
        check_choice("simulation.backend", self.backend, BACKENDS)
        check_range("simulation.num_cpus_per_client", self.num_cpus_per_client, low=1)
        check_range("simulation.num_cpus", self.num_cpus, low=1)
        check_range("simulation.num_cpus_per_client", self.num_cpus_per_client, high=self.num_cpus)


def signal_after_calls(obj: Any, method: str) -> threading.Event | None:
    """An event set after each call of ``obj.method``, which is wrapped in place; None when ``obj`` has no such
    method. Flower's in-memory LinkState stores messages through such methods (``store_message_ins``,
    ``store_message_res``): waiting on the event, instead of sleeping a fixed interval, finds a message at once."""
    call: Callable[..., Any] | None = getattr(obj, method, None)
    if call is None:
        return None
    called = threading.Event()

    def call_and_signal(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        called.set()
        return result

    setattr(obj, method, call_and_signal)
    return called


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run a block (or, as a decorator, a function) with one torch thread, and give the caller back its own count.

    Every Flower ClientApp and ServerApp runs with one thread, and CPU kernels split their sums by thread count, so
    the same seed gives other last bits with another count: the in-process runners pin it to match Flower on any
    machine, whoever calls them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device_available(device: str) -> None:
    """Raise ``ConfigError`` when this machine cannot run models on ``device`` (``cuda`` without a GPU, a GPU index
    beyond its count): a setting the user can fix, said in one line before anything is built."""
    name = torch.device(device)
    if name.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device}, but this torch has no usable Apple GPU (MPS) here (use device=cpu)")
    if name.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but torch finds no CUDA GPU on this machine (use device=cpu)")
    if name.index is not None and name.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
