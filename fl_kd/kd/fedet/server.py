"""Fed-ET's server: one small model per client architecture, the large server model, and the round's three steps.

Per round, from the accepted client models:

1. *average*: each architecture's small model becomes the sample-weighted average of its clients' models;
2. *ensemble transfer*: every client model predicts the public inputs; the server model trains on the weighted
   consensus with diversity regularisation (:mod:`fl_kd.kd.fedet.ensemble`);
3. *transfer back*: the server model's logits on the public inputs are distilled into each small model, which the
   clients then receive.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from fl_kd.kd.fedet.config import FedETConfig
from fl_kd.kd.fedet.ensemble import EnsembleTargets, ensemble_targets
from fl_kd.kd.losses import kd_loss
from fl_kd.kd.robust_weights import robust_average
from fl_kd.kd.seeding import SERVER_ID, derive_seed, seeded_torch, torch_generator
from fl_kd.kd.training import accuracy, check_loss, cpu_state_dict, minibatches, predict_logits, sgd
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE
from fl_kd.kd.weights import Arrays, load_arrays, model_arrays, weighted_average, within_headroom

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientModel:
    """One accepted answer: a client's trained small model."""

    client_id: int
    architecture: str
    weights: Arrays
    num_examples: int


class EnsembleTransferServer:
    """The server model and the per-architecture small models of Fed-ET.

    Parameters
    ----------
    model : nn.Module
        The large server model, ``(B, *input_shape)`` -> logits ``(B, C)``.
    small_models : Mapping[str, nn.Module]
        Architecture name -> its small model (the weights the clients of that architecture receive).
    public_x : Tensor
        ``(N, *input_shape)`` public inputs (labels are never given to the server).
    config : FedETConfig
        Training settings.
    seed : int (default: 0)
        Base seed; every phase's shuffling and dropout derive from ``(seed, round, phase)``.
    device : torch.device | str (default: "cpu")
        Where the models train.
    max_abs_value : float (default: 1e4)
        Bound on an answer's weights; a small model averaged or transferred beyond its headroom is not published
        (:data:`~fl_kd.kd.weights.PUBLISH_HEADROOM`).
    """

    def __init__(
        self,
        model: nn.Module,
        small_models: Mapping[str, nn.Module],
        public_x: Tensor,
        config: FedETConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        if public_x.shape[0] == 0:
            raise ValueError("the public transfer set is empty")
        if not small_models:
            raise ValueError("no client architecture given")
        self.config = config
        self.seed = seed
        self.max_abs_value = float(max_abs_value)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.small_models = {name: small_models[name].to(self.device) for name in sorted(small_models)}
        # Scratch copies that evaluate client weights without touching the small models.
        self._scratch = {name: copy.deepcopy(net) for name, net in self.small_models.items()}
        self._reference = {name: model_arrays(net) for name, net in self.small_models.items()}
        self.public_x = public_x.cpu()
        self._shares: dict[int, float] = {}

    @property
    def num_public(self) -> int:
        """Size N of the public transfer set."""
        return int(self.public_x.shape[0])

    def reference(self, architecture: str) -> Arrays:
        """Names, shapes and dtypes an answer of ``architecture`` must have."""
        return self._reference[architecture]

    def small_model_arrays(self, architecture: str) -> Arrays:
        """The current small model of ``architecture`` as float32 arrays."""
        return model_arrays(self.small_models[architecture])

    def client_logits(self, architecture: str, weights: Mapping[str, NDArray[Any]]) -> Tensor:
        """Eval-mode logits ``(N, C)`` of a client model of ``architecture`` on the public inputs."""
        scratch = self._scratch[architecture]
        load_arrays(scratch, weights, self.max_abs_value)
        return predict_logits(scratch, self.public_x, device=self.device)

    def step(self, round: int, answers: list[ClientModel], logits: list[Tensor]) -> dict[str, float | int]:
        """Average, train the server model on the ensemble, transfer back; returns the round's figures.

        ``answers`` and their public ``logits`` ``(N, C)`` come in the same order (by client id).
        """
        stats: dict[str, float | int] = {"num_models": len(answers)}
        self._shares = {}  # nobody's weight went into an empty round
        if not answers:
            return stats | {
                "agreement": math.nan,
                "dissent_share": math.nan,
                "server_loss": math.nan,
                "transfer_loss": math.nan,
            }
        self._average(answers)
        targets = ensemble_targets(torch.stack(logits))
        stats |= {"agreement": targets.agreement(), "dissent_share": targets.dissent_share()}
        stats["server_loss"] = self._train_server(round, targets)
        stats["transfer_loss"] = self._transfer(round)
        return stats

    def _average(self, answers: list[ClientModel]) -> None:
        """Each architecture with answers becomes the sample-weighted average of them (or their robust fusion)."""
        groups = {name: [a for a in answers if a.architecture == name] for name in self.small_models}
        groups = {name: members for name, members in groups.items() if members}
        self._shares = {}
        rule, settings = self.config.aggregation, self.config.robust_settings()
        for name, members in groups.items():
            weights, counts = [a.weights for a in members], [float(a.num_examples) for a in members]
            if self.config.aggregation == "mean":
                average, shares = weighted_average(weights, counts), np.asarray(counts) / math.fsum(counts)
            else:
                average, shares = robust_average(weights, counts, rule, settings)
            if not within_headroom(average, self.max_abs_value):  # see PUBLISH_HEADROOM: clients would be locked out
                log.warning("%s: the averaged model has a weight beyond its headroom; the model is kept", name)
                self._shares |= {a.client_id: 0.0 for a in members}
                continue
            load_arrays(self.small_models[name], average, self.max_abs_value)
            self._shares |= {a.client_id: float(w) / len(groups) for a, w in zip(members, shares, strict=True)}

    def fusion_weights(self) -> dict[int, float]:
        """Client id -> its share of the last averaging's weight (each architecture counts equally)."""
        return dict(self._shares)

    def _train_server(self, round: int, targets: EnsembleTargets) -> float:
        """``server_epochs`` over the public inputs: consensus loss + ``diversity_weight`` x diversity KD."""
        cfg = self.config
        labels = targets.consensus_labels
        consensus, diversity = targets.consensus_logits, targets.diversity_logits
        dissent = targets.has_dissent

        def loss_fn(logits: Tensor, index: Tensor) -> Tensor:
            if cfg.consensus_loss == "hard":
                main = F.cross_entropy(logits, labels[index].to(self.device))
            else:
                main = kd_loss(logits, consensus[index].to(self.device), cfg.temperature)
            div = kd_loss(logits, diversity[index].to(self.device), cfg.temperature, reduction="none")
            # Samples without dissenters have no diversity target; where() drops their value and gradient.
            div = torch.where(dissent[index].to(self.device), div, torch.zeros_like(div))
            return main + cfg.diversity_weight * div.mean()

        return self._fit(self.model, round, "fedet_server", cfg.server_epochs, cfg.server_lr, loss_fn)

    def _transfer(self, round: int) -> float:
        """Distil the server model's public logits into every small model; mean final-epoch loss over them."""
        cfg = self.config
        teacher = predict_logits(self.model, self.public_x, device=self.device)
        losses = []
        for name, net in self.small_models.items():
            before = model_arrays(net)
            losses.append(
                self._fit(
                    net,
                    round,
                    f"fedet_transfer_{name}",
                    cfg.transfer_epochs,
                    cfg.transfer_lr,
                    lambda logits, index: kd_loss(logits, teacher[index].to(self.device), cfg.temperature),
                )
            )
            if not within_headroom(model_arrays(net), self.max_abs_value):
                log.warning("%s: the transfer took a weight beyond its headroom; the small model is kept", name)
                load_arrays(net, before, self.max_abs_value)
        return math.fsum(losses) / len(losses)

    def _fit(
        self,
        net: nn.Module,
        round: int,
        phase: str,
        epochs: int,
        lr: float,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> float:
        """Seeded SGD over the public inputs; mean per-sample loss of the final epoch (0 without epochs)."""
        cfg = self.config
        generator = torch_generator(derive_seed(self.seed, SERVER_ID, round, phase, "shuffle"))
        optimizer = sgd(net, lr, cfg.momentum, cfg.weight_decay)
        net.train()
        loss_sum = 0.0
        with seeded_torch(derive_seed(self.seed, SERVER_ID, round, phase, "rng"), self.device):
            for _ in range(epochs):
                loss_sum = 0.0
                for index in minibatches(self.num_public, cfg.server_batch_size, generator):
                    loss = loss_fn(net(self.public_x[index].to(self.device)), index)
                    check_loss(loss, f"the server model ({phase})", "strategy.server_lr or strategy.transfer_lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * index.numel()
        return loss_sum / self.num_public

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Top-1 accuracy of the server model on ``(x, y)``."""
        return accuracy(self.model, x, y, device=self.device)

    def state_dict(self) -> dict[str, Any]:
        """Server model and small models (CPU tensors)."""
        return {
            "model": cpu_state_dict(self.model),
            "small_models": {name: cpu_state_dict(net) for name, net in self.small_models.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` (loadable with ``torch.load(weights_only=True)``)."""
        torch.save(self.state_dict(), Path(path))
