"""Client side of selective knowledge distillation, after FedGEMS (Cheng et al., 2021, arXiv:2110.11027).

A client trains its own (small, tier-specific) model on private data, answers the server's query with logits
on transfer samples, and then distils the server's broadcast logits back into its model. Only logits cross the
wire, so client architectures may differ from each other and from the server's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, DTypeLike, NDArray
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fl_kd.config import check_range
from fl_kd.kd.losses import distillation_loss, kd_loss
from fl_kd.kd.seeding import derive_seed, seeded_torch, torch_generator
from fl_kd.kd.training import (
    accuracy,
    check_logits,
    check_positions,
    cpu_state_dict,
    minibatches,
    predict_logits,
    sgd,
    to_wire,
)


@dataclass
class ClientTrainConfig:
    """Per-client (usually per device tier) training settings.

    Attributes
    ----------
    local_epochs : int
        Epochs of cross-entropy on private data per round (E_loc).
    batch_size : int
        Mini-batch size, for private data and transfer set alike.
    lr : float
        SGD learning rate; the optimiser is recreated in each phase.
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings.
    distill_epochs : int (default: 1)
        Epochs over the transfer set distilling the server's logits (E_pub).
    epsilon : float (default: 0.75)
        Weight of cross-entropy in ``eps * CE + (1 - eps) * KD``.
    temperature : float (default: 1.0)
        KD temperature.
    max_grad_norm : float (default: 0.0)
        Each step's gradient is scaled down to this L2 norm when it is longer (0: never). Why: a small model that
        fits two classes of its own and is then asked to imitate ten takes a few very large steps at the start of
        distillation, and they can leave it answering one class on every input for the rest of the run.
    """

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    distill_epochs: int = 1
    epsilon: float = 0.75
    temperature: float = 1.0
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        check_range("local_epochs", self.local_epochs, low=0)
        check_range("distill_epochs", self.distill_epochs, low=0)
        check_range("batch_size", self.batch_size, low=1)
        check_range("lr", self.lr, low=0.0, low_open=True)
        check_range("max_grad_norm", self.max_grad_norm, low=0.0)  # 0: no clipping
        check_range("epsilon", self.epsilon, low=0.0, high=1.0)
        check_range("temperature", self.temperature, low=0.0, low_open=True)


class DistillClient:
    """One client's model, private data and view of the transfer set.

    Parameters
    ----------
    client_id : int
        Stable id; seeds this client's streams together with ``seed`` and the round.
    model : nn.Module
        Client model mapping ``(B, *input_shape)`` to logits ``(B, C)``.
    train_x, train_y : Tensor
        Private data ``(n, *input_shape)`` and int64 labels ``(n,)``.
    transfer_x, transfer_y : Tensor
        The labelled part of the transfer set ``(N, *input_shape)``, ``(N,)``, in the server's order (may be empty
        for strategies that use inputs only).
    config : ClientTrainConfig
        Training settings (from the client's device tier).
    seed : int (default: 0)
        Base seed of the run.
    device : torch.device | str (default: "cpu")
        Where the model trains.
    public_x : Tensor | None (default: None)
        Inputs of the whole transfer set, labelled part first then the unlabelled part (``transfer_x`` when None):
        what *public positions* index.
    """

    def __init__(
        self,
        client_id: int,
        model: nn.Module,
        train_x: Tensor,
        train_y: Tensor,
        transfer_x: Tensor,
        transfer_y: Tensor,
        config: ClientTrainConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
        public_x: Tensor | None = None,
    ) -> None:
        if train_x.shape[0] != train_y.shape[0] or transfer_x.shape[0] != transfer_y.shape[0]:
            raise ValueError("inputs and labels disagree on the number of samples")
        if train_x.shape[0] == 0:
            raise ValueError(f"client {client_id} has no private training data")
        public_x = transfer_x if public_x is None else public_x
        if public_x.shape[0] == 0:
            raise ValueError("the transfer set is empty")
        self.client_id = int(client_id)
        self.config = config
        self.seed = seed
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_x, self.train_y = train_x.cpu(), train_y.cpu().long()
        self.transfer_x, self.transfer_y = transfer_x.cpu(), transfer_y.cpu().long()
        self.public_x = public_x.cpu()
        self.num_classes = int(predict_logits(self.model, self.public_x[:1], device=self.device).shape[1])
        self.average: AveragedModel | None = None
        self.average_tail = 0.0

    def keep_weight_average(self, tail: float) -> None:
        """Show the average of the weights over the last ``tail`` share of each training phase's steps.

        Tail averaging (Jain et al., "Parallelizing Stochastic Gradient Descent for Least Squares Regression:
        Mini-batching, Averaging, and Model Misspecification", JMLR 2018; SWA's equal average over one phase): each
        phase (local training, distillation, fine-tuning) starts the average again, and the weights after each of
        its last ``ceil(tail * steps)`` steps go into it with equal weight. The average is what the client answers
        the server with and is evaluated on (:attr:`shown_model`); training goes on from the trained weights. It
        smooths the noise of small batches at a fixed learning rate. Averaging from a phase's start instead would
        show the phase's transient: a client with 34 private samples has two steps of fine-tuning, and the average
        of the first (one step from the distilled weights) and the second got 3% of its own samples right where
        the trained weights got 94%; at ``tail=0.5`` a phase of one or two steps shows its last weights.
        """
        if not 0.0 < tail <= 1.0:
            raise ValueError(f"the averaged tail must be a share in (0, 1], got {tail}")
        self.average = AveragedModel(self.model, use_buffers=True)
        self.average_tail = tail

    @property
    def shown_model(self) -> nn.Module:
        """The model the client answers and is evaluated with: the weight average when it keeps one."""
        return self.model if self.average is None else self.average.module

    @property
    def num_examples(self) -> int:
        """Private training set size (the weight a strategy may give this client)."""
        return int(self.train_x.shape[0])

    def local_train(self, round: int, penalty: Callable[[], Tensor] | None = None) -> dict[str, float]:
        """E_loc epochs of cross-entropy on private data (plus ``penalty()`` at every step, when given); gives the
        last epoch's ``loss`` and ``num_examples``."""
        result = self.train_supervised(round, "local_train", self.config.local_epochs, penalty=penalty)
        return {
            "loss": result["loss"],
            "num_examples": float(self.num_examples),
            "train_samples": result["train_samples"],
        }

    def train_supervised(
        self,
        round: int,
        phase: str,
        epochs: int,
        x: Tensor | None = None,
        y: Tensor | None = None,
        penalty: Callable[[], Tensor] | None = None,
    ) -> dict[str, float]:
        """``epochs`` of cross-entropy on ``(x, y)`` (the private data when None), seeded under ``phase``.

        The one supervised loop of a client: local training, FedMD's revisit and public pre-training, fine-tuning
        after distillation. ``penalty``, when given, is added to every step's loss (a personal model's pull towards
        the shared one). Gives the last epoch's ``loss`` and ``train_samples``.
        """
        if x is None or y is None:
            x, y = self.train_x, self.train_y

        def loss_fn(logits: Tensor, labels: Tensor, _index: Tensor) -> Tensor:
            loss = F.cross_entropy(logits, labels)
            return loss if penalty is None else loss + penalty()

        loss = self._run_epochs(round, phase, epochs, x, y, loss_fn)
        return {"loss": loss, "train_samples": float(epochs * x.shape[0])}

    def logits(self, positions: ArrayLike, dtype: DTypeLike = np.float32) -> NDArray[np.floating[Any]]:
        """Eval-mode logits ``(n, C)`` on transfer ``positions`` ``(n,)``: the answer to a server query.

        ``dtype`` is the wire format (float32, or float16 to halve the uplink).
        """
        index = check_positions(positions, int(self.transfer_x.shape[0]))
        if index.size == 0:
            return to_wire(torch.zeros(0, self.num_classes), dtype)
        return to_wire(
            predict_logits(self.shown_model, self.transfer_x[torch.from_numpy(index)], device=self.device), dtype
        )

    def distill(
        self,
        round: int,
        server_logits: ArrayLike,
        label_free: ArrayLike | None = None,
        withheld: ArrayLike | None = None,
    ) -> dict[str, float]:
        """E_pub epochs of ``eps * CE + (1 - eps) * KD(server -> client)`` over the transfer set.

        Parameters
        ----------
        round : int
            Federated round.
        server_logits : ndarray
            ``(N, C)`` server logits on the whole transfer set (float32 or float16).
        label_free : ndarray | None (default: None)
            Transfer positions whose labels the client must not learn: pure KD there (the server measures the
            clients' reliability on them, which memorised labels would inflate).
        withheld : ndarray | None (default: None)
            Transfer positions the client learns nothing from: the server trained on their labels, so its logits
            there carry them. They stay in the batches (at no loss), so every other sample's batches are unchanged.

        Raises
        ------
        ValueError
            If the logits are mis-shaped or non-finite; the model is left untouched.
        """
        num = int(self.transfer_x.shape[0])
        teacher = check_logits("server logits", server_logits, (num, self.num_classes))
        cfg = self.config
        hidden = torch.zeros(num, dtype=torch.bool)
        if label_free is not None:
            hidden[torch.from_numpy(check_positions(label_free, num))] = True
        skipped = torch.zeros(num, dtype=torch.bool)
        if withheld is not None:
            skipped[torch.from_numpy(check_positions(withheld, num))] = True
        masked = bool(hidden.any() or skipped.any())

        def loss_fn(logits: Tensor, y: Tensor, index: Tensor) -> Tensor:
            target = teacher[index].to(self.device)
            if not masked:
                return distillation_loss(logits, target, y, cfg.epsilon, cfg.temperature)
            mixed = distillation_loss(logits, target, y, cfg.epsilon, cfg.temperature, reduction="none")
            pure = kd_loss(logits, target, cfg.temperature, reduction="none")
            per_sample = torch.where(hidden[index].to(self.device), pure, mixed)
            return torch.where(skipped[index].to(self.device), torch.zeros_like(pure), per_sample).mean()

        loss = self._run_epochs(round, "distill", cfg.distill_epochs, self.transfer_x, self.transfer_y, loss_fn)
        return {"loss": loss, "num_examples": float(num), "train_samples": float(cfg.distill_epochs * num)}

    def public_logits(self, positions: ArrayLike, dtype: DTypeLike = np.float32) -> NDArray[np.floating[Any]]:
        """Eval-mode logits ``(n, C)`` on public ``positions`` (labelled part first, then unlabelled)."""
        index = check_positions(positions, int(self.public_x.shape[0]))
        if index.size == 0:
            return to_wire(torch.zeros(0, self.num_classes), dtype)
        return to_wire(
            predict_logits(self.shown_model, self.public_x[torch.from_numpy(index)], device=self.device), dtype
        )

    def distill_on(
        self,
        round: int,
        phase: str,
        positions: ArrayLike,
        teacher_logits: ArrayLike,
        epochs: int,
        temperature: float | None = None,
    ) -> dict[str, float]:
        """``epochs`` of pure KD (no labels) towards ``teacher_logits`` ``(n, C)`` on public ``positions`` ``(n,)``.

        How logit-sharing peers (FedMD's digest, DS-FL) take in a consensus: shuffling is seeded by
        ``(seed, client, round, phase)`` like every other phase.
        """
        index = torch.from_numpy(check_positions(positions, int(self.public_x.shape[0])))
        teacher = check_logits("teacher logits", teacher_logits, (int(index.numel()), self.num_classes))
        temp = self.config.temperature if temperature is None else temperature
        if index.numel() == 0 or epochs == 0:
            return {"loss": 0.0, "train_samples": 0.0}
        dummy = torch.zeros(int(index.numel()), dtype=torch.long)
        loss = self._run_epochs(
            round,
            phase,
            epochs,
            self.public_x[index],
            dummy,
            lambda logits, _y, batch: kd_loss(logits, teacher[batch].to(self.device), temp),
        )
        return {"loss": loss, "train_samples": float(epochs * index.numel())}

    def _run_epochs(
        self,
        round: int,
        phase: str,
        epochs: int,
        x: Tensor,
        y: Tensor,
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> float:
        """Shared SGD loop; shuffling and dropout are seeded by ``(seed, client_id, round, phase)``."""
        cfg = self.config
        generator = torch_generator(derive_seed(self.seed, self.client_id, round, phase, "shuffle"))
        optimizer = sgd(self.model, cfg.lr, cfg.momentum, cfg.weight_decay)
        first_averaged = 0
        if self.average is not None:
            steps = epochs * len(minibatches(x.shape[0], cfg.batch_size, torch.Generator()))  # count, not order
            first_averaged = steps - math.ceil(self.average_tail * steps)
            self._restart_average()
        step = 0
        self.model.train()
        loss_sum = 0.0
        with seeded_torch(derive_seed(self.seed, self.client_id, round, phase, "rng"), self.device):
            for _ in range(epochs):
                loss_sum = 0.0
                for index in minibatches(x.shape[0], cfg.batch_size, generator):
                    logits = self.model(x[index].to(self.device))
                    loss = loss_fn(logits, y[index].to(self.device), index)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    if self.average is not None and step >= first_averaged:
                        self.average.update_parameters(self.model)
                    step += 1
                    loss_sum += float(loss.detach()) * index.numel()
        return loss_sum / x.shape[0]

    def evaluate(self, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
        """Top-1 accuracy of the shown model (:attr:`shown_model`) on ``(x, y)``."""
        return accuracy(self.shown_model, x, y, batch_size, self.device)

    def state_dict(self) -> dict[str, Any]:
        """Model weights as CPU tensors, and the weight average's when one is kept: what a Flower client keeps in
        its context state between rounds."""
        state = {"model": cpu_state_dict(self.model)}
        if self.average is not None:
            state["average"] = cpu_state_dict(self.average)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a kept average missing from ``state`` restarts from the weights."""
        self.model.load_state_dict(state["model"])
        if self.average is None:
            return
        if "average" in state:
            self.average.load_state_dict(state["average"])
        else:
            self._restart_average()

    def _restart_average(self) -> None:
        """Start the weight average again from the current weights (its next update copies them)."""
        if self.average is None:
            return
        self.average.module.load_state_dict(self.model.state_dict())
        self.average.n_averaged.zero_()
