"""``python -m benchmarks.kd.ceiling``: a model's centralised accuracy on a dataset's full training split.

The ceiling of a federated server model is what the same architecture reaches when it sees every training sample
with its label. Training is plain SGD with momentum on the full training split under a cosine learning-rate
schedule, seeded, with 1-2 torch threads; after every epoch the test accuracy and the epoch's wall time are printed
and the whole curve is written as JSON under ``--out``.

Example::

    python -m benchmarks.kd.ceiling --dataset fashion_mnist --model cnn_server --epochs 10
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import REPO_ROOT, machine_line
from fl_kd.data.registry import load_dataset
from fl_kd.models import build_model, count_parameters
from fl_kd.simulations.cli import user_errors_exit

ENTRY = "python -m benchmarks.kd.ceiling"
EVAL_BATCH = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=ENTRY, description="Centralised accuracy ceiling of a zoo model.")
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset registry name")
    parser.add_argument("--model", default="cnn_server", help="model registry name")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (cosine decay to 0)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, choices=(1, 2), help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "ceiling")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be >= 1 and --lr > 0")
    return args


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` that ``model`` (in eval mode) labels as ``y``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        correct += int((model(x[i : i + EVAL_BATCH]).argmax(1) == y[i : i + EVAL_BATCH]).sum())
    return correct / max(1, len(x))


def run_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.model`` on the full training split of ``args.dataset``; the per-epoch record."""
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    model = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(data.x_train) / args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    record: dict[str, Any] = {
        "command": f"{ENTRY} --dataset {args.dataset} --model {args.model} --epochs {args.epochs}",
        "machine": machine_line(),
        "dataset": args.dataset,
        "model": args.model,
        "parameters": count_parameters(model),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "epochs": [],
    }
    print(f"{args.model} on {args.dataset}: {record['parameters']:,} parameters, {len(data.x_train)} train samples")
    torch.manual_seed(args.seed)  # dropout draws from the global generator
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.x_train), generator=generator)
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimiser.step()
            schedule.step()
        train_seconds = time.perf_counter() - start
        test_accuracy = accuracy(model, data.x_test, data.y_test)
        record["epochs"].append({"epoch": epoch, "test_accuracy": test_accuracy, "train_seconds": train_seconds})
        print(f"epoch {epoch:3d}  test accuracy {test_accuracy:.4f}  train {train_seconds:.1f} s", flush=True)
    record["final_test_accuracy"] = record["epochs"][-1]["test_accuracy"]
    record["best_test_accuracy"] = max(e["test_accuracy"] for e in record["epochs"])
    return record


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> None:
    """Run the ceiling and write ``<out>/<dataset>_<model>_seed<seed>.json``."""
    args = parse_args(argv)
    record = run_ceiling(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.dataset}_{args.model}_seed{args.seed}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"final {record['final_test_accuracy']:.4f}, best {record['best_test_accuracy']:.4f}; wrote {path}")


if __name__ == "__main__":
    main()
