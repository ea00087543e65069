"""Shared test settings: one thread per process keeps the suite fast and deterministic on 2 cores."""

import torch

torch.set_num_threads(1)
