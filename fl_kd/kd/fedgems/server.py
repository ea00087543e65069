"""Server side of selective knowledge distillation, after FedGEMS (Cheng et al., 2021, arXiv:2110.11027).

A large server model learns on a labelled transfer set from three sources, chosen per sample and per step:

* the label alone, when it is already right (its logits then go into the knowledge cache);
* its own cached logits, when it is wrong on a sample it once got right (self-distillation);
* a fused teacher of the clients that are right on the sample (:func:`~fl_kd.kd.fedgems.selection.select_teacher`),
  when it is wrong and has no cached knowledge; with no correct client it falls back to cross-entropy.

Clients are asked only for samples the server gets wrong and has not cached, so the uplink shrinks over
rounds. The class holds no Flower code: a strategy moves arrays in and out, and the reference runner calls it
directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import DTypeLike, NDArray
from torch import Tensor, nn

from fl_kd.checkpoint import CheckpointError, check_state_dict, content_digest, read_checkpoint
from fl_kd.config import ConfigError
from fl_kd.data.augment import shift_and_mirror
from fl_kd.kd.cache import KnowledgeCache
from fl_kd.kd.fedgems.options import ServerOptions
from fl_kd.kd.fedgems.selection import select_teacher
from fl_kd.kd.fedgems.server_config import ServerDistillConfig
from fl_kd.kd.fedgems.stats import SelectionStats
from fl_kd.kd.losses import kd_loss
from fl_kd.kd.seeding import SERVER_ID, derive_seed, seeded_torch, torch_generator
from fl_kd.kd.training import (
    accuracy,
    check_logits,
    check_loss,
    check_positions,
    cpu_state_dict,
    minibatches,
    predict_logits,
    sgd,
    to_wire,
    weight_average,
)

TRANSFER_DIGEST = "transfer_digest"  # checkpoint key: the transfer set whose positions the saved cache indexes
log = logging.getLogger(__name__)


class SelectiveDistillServer:
    """The server model, its knowledge cache and the selective distillation step.

    Parameters
    ----------
    model : nn.Module
        Server model mapping ``(B, *input_shape)`` to logits ``(B, C)``.
    transfer_x : Tensor
        ``(N, *input_shape)`` inputs of the labelled transfer set, in the order all parties share.
    transfer_y : Tensor
        ``(N,)`` int64 labels of the transfer set.
    config : ServerDistillConfig (default: ServerDistillConfig())
        Distillation hyperparameters.
    seed : int (default: 0)
        Base seed; each round's shuffling and dropout derive from ``(seed, round)``.
    device : torch.device | str (default: "cpu")
        Where the model trains; data stay on CPU and move per batch.
    unlabelled_x : Tensor | None (default: None)
        ``(M, *input_shape)`` unlabelled transfer inputs, public positions ``N..N+M-1``; used only with
        ``config.unlabelled_trust != "none"``.
    unlabelled_y : Tensor | None (default: None)
        ``(M,)`` their true labels, known in simulation only: read for two diagnostic figures (the client teacher's
        and the server's accuracy where the teacher is used), never for training.
    """

    def __init__(
        self,
        model: nn.Module,
        transfer_x: Tensor,
        transfer_y: Tensor,
        config: ServerDistillConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        unlabelled_x: Tensor | None = None,
        unlabelled_y: Tensor | None = None,
    ) -> None:
        if transfer_x.shape[0] != transfer_y.shape[0] or transfer_y.dim() != 1:
            raise ValueError(
                f"transfer_x (N, ...) and transfer_y (N,) disagree: {tuple(transfer_x.shape)} "
                f"vs {tuple(transfer_y.shape)}"
            )
        if transfer_x.shape[0] == 0:
            raise ValueError("the transfer set is empty")
        self.config = config if config is not None else ServerDistillConfig()
        if (self.config.augment_shift or self.config.augment_mirror) and transfer_x.dim() != 4:
            raise ConfigError(
                "strategy.server_augment_shift and strategy.server_augment_mirror need image inputs (N, C, H, W), "
                f"got {tuple(transfer_x.shape)}"
            )
        self.seed = seed
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.transfer_x = transfer_x.cpu()
        self.transfer_y = transfer_y.cpu().long()
        self.num_classes = int(predict_logits(self.model, self.transfer_x[:1], device=self.device).shape[1])
        self.knowledge_cache = KnowledgeCache(self.num_transfer, self.num_classes)
        self.ema = weight_average(self.model, self.config.ema_decay)
        self._views = torch_generator(derive_seed(seed, SERVER_ID, "server_augment"))  # each round draws anew
        self.options = ServerOptions(
            self.config, self.transfer_y, seed, unlabelled_x, unlabelled_y, num_classes=self.num_classes
        )

    @property
    def published(self) -> nn.Module:
        """The model the server shows (broadcast, query, evaluation, checkpoint): the trained one, or its EMA."""
        return self.ema.module if self.ema is not None else self.model

    def _after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _restart_ema(self) -> None:
        """Let the average start again from the model's current weights (after loading a checkpoint)."""
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
            self.ema.n_averaged.zero_()

    @property
    def num_transfer(self) -> int:
        """Size N of the transfer set."""
        return int(self.transfer_x.shape[0])

    def needed_positions(self, round: int = 0) -> NDArray[np.int64]:
        """Positions ``(n,)`` of transfer samples the server gets wrong and has not cached (the query).

        The extensions widen it: ``distill_correct`` adds the trained samples the server gets right,
        ``unlabelled_trust`` asks for the whole labelled part (to measure reliability) and the round's unlabelled
        positions (``N + j``).
        """
        predictions = self._predict().argmax(dim=1)
        needed = (predictions != self.transfer_y) & ~self.knowledge_cache.filled
        return self.options.widen_query(round, needed, predictions == self.transfer_y)

    def distill(self, round: int, client_logits: Mapping[int, tuple[NDArray[Any], NDArray[Any]]]) -> SelectionStats:
        """Run the server's selective distillation for one round.

        Parameters
        ----------
        round : int
            Federated round; seeds this phase's shuffling and dropout.
        client_logits : Mapping[int, tuple[ndarray, ndarray]]
            Client id -> (positions ``(n_k,)``, logits ``(n_k, C)``) on transfer positions, usually the
            answer to :meth:`needed_positions`. Clients may answer different positions; float16 is accepted.

        Returns
        -------
        SelectionStats
            Counts of each learning case in the final epoch, plus per-client teacher shares.

        Raises
        ------
        ValueError
            On mis-shaped, non-integer, duplicate, out-of-range or non-finite inputs, before the model
            changes.
        """
        labelled, unlabelled = self.options.split_answers(client_logits, self.num_transfer, self.num_classes)
        teacher, has_teacher, some_client_right, stats = self._fuse_clients(round, labelled)
        self._knowledge_stats(some_client_right, stats)
        unlabelled_teacher = self.options.unlabelled_teacher(round, labelled, unlabelled, self.num_classes, stats)
        if unlabelled_teacher is not None:
            self.options.teacher_figures(unlabelled_teacher, self._predict, stats)
        cfg = self.config
        generator = torch_generator(derive_seed(self.seed, SERVER_ID, round, "server_distill_shuffle"))
        self._views = torch_generator(derive_seed(self.seed, SERVER_ID, round, "server_augment"))
        optimizer = sgd(self.model, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.model.train()
        with seeded_torch(derive_seed(self.seed, SERVER_ID, round, "server_distill_rng"), self.device):
            for _ in range(cfg.epochs):
                counts = torch.zeros(5, dtype=torch.long)
                loss_sum = 0.0
                for index in minibatches(self.num_transfer, cfg.batch_size, generator):
                    batch_loss, batch_counts = self._step(optimizer, index, teacher, has_teacher)
                    counts += batch_counts
                    loss_sum += batch_loss * index.numel()
                stats.n_self, stats.n_cache, stats.n_clients, stats.n_ce_only = (int(c) for c in counts[:4])
                stats.loss = loss_sum / self.num_transfer
                if cfg.distill_correct:
                    stats.extra["n_dark"] = int(counts[4])
                if unlabelled_teacher is not None:
                    stats.extra["unlabelled_loss"] = self._unlabelled_epoch(optimizer, generator, *unlabelled_teacher)
        stats.cache_size = self.knowledge_cache.num_filled
        return stats

    @torch.no_grad()
    def _knowledge_stats(self, some_client_right: Tensor, stats: SelectionStats) -> None:
        """Before training: accuracy on the held-out slice, and on the samples where no client was right.

        The latter is measured where it is honest: on the held-out slice when there is one (never trained on by
        label, nor on a teacher chosen by its label; with ``held_out_server_labels`` it is, so neither figure is
        given), else on the whole labelled part.
        """
        correct = self._predict().argmax(dim=1) == self.transfer_y
        honest = self.options.held_out if self.options.held_out is not None else torch.ones_like(correct)
        trained = self.config.held_out_server_labels
        if self.options.held_out is not None and not trained:
            stats.extra["held_out_accuracy"] = float(correct[honest].double().mean())
        untrusted = honest & ~some_client_right
        stats.extra["n_untrusted"] = int(untrusted.sum())
        if untrusted.any() and not trained:
            stats.extra["untrusted_accuracy"] = float(correct[untrusted].double().mean())

    def _view(self, x: Tensor) -> Tensor:
        """The batch as the model trains on it: shifted and mirrored (from this round's draws) if the config asks."""
        return shift_and_mirror(x.to(self.device), self.config.augment_shift, self.config.augment_mirror, self._views)

    def _step(
        self, optimizer: torch.optim.Optimizer, index: Tensor, teacher: Tensor, has_teacher: Tensor
    ) -> tuple[float, Tensor]:
        cfg = self.config
        x = self._view(self.transfer_x[index])
        y = self.transfer_y[index].to(self.device)
        logits = self.model(x)
        correct = (logits.argmax(dim=1) == y).cpu()
        held = self.options.held_out[index] if self.options.held_out is not None else None
        if held is not None:
            correct &= ~held  # never trained on its label, never cached: its correctness stays honest
        cached_logits, filled = self.knowledge_cache.lookup(index)
        use_cache = ~correct & filled
        use_clients = ~correct & ~filled & has_teacher[index]
        ce_only = ~(correct | use_cache | use_clients)
        dark = correct & has_teacher[index] if cfg.distill_correct else torch.zeros_like(correct)
        if held is not None:
            ce_only &= ~held
        soft = (use_cache | use_clients | dark).to(self.device)
        targets = torch.where(use_cache.unsqueeze(1), cached_logits, teacher[index]).to(self.device)
        cross_entropy = F.cross_entropy(logits, y, reduction="none")
        kd = kd_loss(logits, targets, cfg.temperature, reduction="none")
        # Samples without soft targets still get a (finite) kd value; where() drops it and its gradient.
        per_sample = torch.where(soft, cfg.epsilon * cross_entropy + (1.0 - cfg.epsilon) * kd, cross_entropy)
        if held is not None and not cfg.held_out_server_labels:
            # A held-out sample learns only from the clients' soft targets, never from its label (by default).
            held_loss = torch.where(soft, kd, torch.zeros_like(kd))
            per_sample = torch.where(held.to(self.device), held_loss, per_sample)
        loss = per_sample.mean()
        check_loss(loss, "the server model", "strategy.server_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self._after_step()
        # Cache the logits that were right at this step, before the update (as the server "knew" them).
        self.knowledge_cache.update(index[correct], logits.detach()[correct.to(self.device)])
        counts = torch.stack([correct.sum(), use_cache.sum(), use_clients.sum(), ce_only.sum(), dark.sum()])
        return float(loss.detach()), counts

    def _unlabelled_epoch(
        self, optimizer: torch.optim.Optimizer, generator: torch.Generator, x: Tensor, teacher: Tensor
    ) -> float:
        """One pass of pure KD towards the reliability-weighted client teacher on the unlabelled samples."""
        loss_sum = 0.0
        for index in minibatches(int(x.shape[0]), self.config.batch_size, generator):
            logits = self.model(self._view(x[index]))
            loss = kd_loss(logits, teacher[index].to(self.device), self.config.temperature)
            check_loss(loss, "the server model", "strategy.server_lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self._after_step()
            loss_sum += float(loss.detach()) * index.numel()
        return loss_sum / max(1, int(x.shape[0]))

    @torch.no_grad()
    def _fuse_clients(
        self, round: int, client_logits: Mapping[int, tuple[NDArray[Any], NDArray[Any]]]
    ) -> tuple[Tensor, Tensor, Tensor, SelectionStats]:
        """Validate all client answers, then fuse them into a teacher ``(N, C)`` and its mask ``(N,)``.

        The held-out slice never gets a teacher chosen by its label: one made of the clients that match the label
        would hand the server that label, and its correctness there would no longer be honest. Without unlabelled
        trust it is fused without the label (every answering client, by confidence), so the server still learns
        there from the clients alone; with it the slice is where the trust is measured and is not distilled, since
        the one label-free teacher that screens liars, the trust, is fitted on those very labels. The third output
        ``(N,)`` says where some client matched the label (a figure, never a training signal).
        """
        answers: list[tuple[int, NDArray[np.int64], Tensor]] = []
        for client_id in sorted(client_logits):  # fixed order keeps floating-point sums reproducible
            positions, logits = client_logits[client_id]
            pos = check_positions(positions, self.num_transfer)
            values = check_logits(f"logits of client {client_id}", logits, (pos.size, self.num_classes))
            answers.append((int(client_id), pos, values))

        teacher = torch.zeros(self.num_transfer, self.num_classes)
        has_teacher = torch.zeros(self.num_transfer, dtype=torch.bool)
        some_client_right = torch.zeros(self.num_transfer, dtype=torch.bool)
        stats = SelectionStats(round=round)
        union = np.unique(np.concatenate([pos for _, pos, _ in answers])) if answers else np.zeros(0, np.int64)
        if union.size == 0:
            stats.nonzero_weight_fraction = {client_id: 0.0 for client_id, _, _ in answers}
            return teacher, has_teacher, some_client_right, stats

        stacked = torch.zeros(len(answers), union.size, self.num_classes)
        available = torch.zeros(len(answers), union.size, dtype=torch.bool)
        for k, (_, pos, values) in enumerate(answers):
            slots = torch.from_numpy(np.searchsorted(union, pos))
            stacked[k, slots] = values
            available[k, slots] = True
        union_index = torch.from_numpy(union)
        labels = self.transfer_y[union_index]
        some_client_right[union_index] = ((stacked.argmax(dim=-1) == labels) & available).any(dim=0)
        held = torch.zeros_like(labels, dtype=torch.bool)
        if self.options.held_out is not None:
            held = self.options.held_out[union_index]
            labels = torch.where(held, -1, labels)
        selected = select_teacher(stacked, labels, self.config.weighting, available)
        teacher[union_index] = selected.logits
        has_teacher[union_index] = selected.has_teacher
        weights = selected.weights
        if self.options.unlabelled_x is not None:
            has_teacher[union_index] &= ~held
            weights = weights * ~held

        stats.num_answered = int(union.size)
        stats.num_teacher = int(has_teacher[union_index].sum())
        for k, (client_id, pos, _) in enumerate(answers):
            answered = available[k]
            share = (weights[k][answered] > 0).double().mean() if pos.size else torch.tensor(0.0)
            stats.nonzero_weight_fraction[client_id] = float(share)
            stats.weight_mass[client_id] = float(weights[k].sum())
        return teacher, has_teacher, some_client_right, stats

    def _predict(self, x: Tensor | None = None) -> Tensor:
        """The shown model's logits on ``x`` (the labelled transfer set by default)."""
        return predict_logits(self.published, self.transfer_x if x is None else x, device=self.device)

    def transfer_logits(self, dtype: DTypeLike = np.float32) -> NDArray[np.floating[Any]]:
        """Eval-mode server logits ``(N, C)`` on the transfer set, the broadcast (float16: half the bytes, clipped)."""
        return to_wire(self._predict(), dtype)

    def unlabelled_logits(self, round: int, dtype: DTypeLike = np.float32) -> tuple[NDArray[np.int64], NDArray[Any]]:
        """Public positions ``(m,)`` of ``round``'s unlabelled subset and the server's logits ``(m, C)`` there."""
        if self.options.unlabelled_x is None:
            raise ValueError("the server holds no unlabelled inputs (unlabelled_trust is off)")
        index = self.options.unlabelled_positions(round)
        logits = self._predict(self.options.unlabelled_x[torch.from_numpy(index)])
        return self.num_transfer + index, to_wire(logits, dtype)

    def evaluate(self, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
        """Top-1 accuracy of the server model (:attr:`published`) on ``(x, y)``."""
        return accuracy(self.published, x, y, batch_size, self.device)

    def state_dict(self) -> dict[str, Any]:
        """Model weights (CPU tensors) and knowledge cache (NumPy arrays): what a later federation starts from.

        The canary tallies and the unlabelled teacher cache are left out: their rounds belong to this run. A resumed
        run gets them back with everything else through :func:`fl_kd.checkpoint.object_state`.
        """
        return {"model": cpu_state_dict(self.published), "knowledge_cache": self.knowledge_cache.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the shown model's weights; an average starts again from them)."""
        self.model.load_state_dict(state["model"])
        self._restart_ema()
        self.knowledge_cache.load_state_dict(state["knowledge_cache"])

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (model, knowledge cache, its transfer set's digest) that `torch.load` reads as weights."""
        state = self.state_dict()
        cache = {key: torch.from_numpy(value) for key, value in state["knowledge_cache"].items()}
        torch.save({"model": state["model"], "knowledge_cache": cache, TRANSFER_DIGEST: self._digest()}, Path(path))

    def _digest(self) -> str:
        return content_digest({"x": self.transfer_x, "y": self.transfer_y})

    def load(self, path: str | Path, load_cache: bool = True) -> None:
        """Start from a checkpoint: a file from :meth:`save`, or a bare model ``state_dict`` (pretrained).

        The knowledge cache is restored too (unless ``load_cache`` is False) when the file's transfer set is this
        server's: cached positions of another one (another seed or dataset) would mean other samples here.
        """
        checkpoint = read_checkpoint(path)
        has_cache = isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping)
        model_state = check_state_dict(self.model, checkpoint["model"] if has_cache else checkpoint, path)
        cache = None
        load_cache = load_cache and has_cache and "knowledge_cache" in checkpoint
        if load_cache and checkpoint.get(TRANSFER_DIGEST) != self._digest():
            log.warning("checkpoint %s: its knowledge cache is of another transfer set; starting without it", path)
        elif load_cache:
            try:
                cache = {key: value.numpy() for key, value in checkpoint["knowledge_cache"].items()}
                self.knowledge_cache.check_state_dict(cache)
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"checkpoint {path}: unusable knowledge cache ({err})") from None
        # Both parts are checked before either is loaded: a bad file never leaves a half-restored server.
        self.model.load_state_dict(model_state)
        self._restart_ema()
        if cache is not None:
            self.knowledge_cache.load_state_dict(cache)
