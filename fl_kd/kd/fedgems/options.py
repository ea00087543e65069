"""The optional extensions of the FedGEMS server that keep knowledge moving (``methods.md`` 2.4).

Today's FedGEMS judges the server's correctness on the samples it trains on, so once it has memorised the
labelled transfer set it asks no client again. The options here, all off by default, change that:

* ``correctness="held_out"``: a seeded slice of the labelled part is never trained on by label and never cached;
  the server's correctness there is honest, so it keeps asking the clients where it is wrong and learns from their
  soft targets alone on those samples, fused without the label (not at all with unlabelled trust);
* ``distill_correct``: the clients' fused soft targets are distilled also where the server is right (dark
  knowledge), so the query covers the samples it gets right as well;
* ``unlabelled_trust="class_reliability"``: clients answer on the unlabelled part too, and the server distils a
  teacher that weights each client by its per-class precision on the labelled part
  (:mod:`fl_kd.kd.fedgems.reliability`);
* ``unlabelled_trust="learned"``: the same, but the teacher is a per-client, per-class combiner fitted each round
  on the held-out slice, whose labels no client trained on (:mod:`fl_kd.kd.fedgems.combiner`);
* ``held_out_server_labels``: with either trust, the server trains on the held-out slice's labels too and the clients
  leave the slice out of all they learn from it, so the slice serves the trust alone;
* ``canaries``: labelled samples hidden in the unlabelled part screen out clients that are honest only where they
  know they are checked (:mod:`fl_kd.kd.fedgems.canaries`);
* ``consensus_z``: the same clients screened out without labels, by their agreement with the other clients
  (:mod:`fl_kd.kd.consensus`);
* ``unlabelled_cache``: the fused teachers of the last rounds are kept and distilled again
  (:mod:`fl_kd.kd.fedgems.teacher_cache`).

:class:`ServerOptions` holds what they need (the held-out mask, the unlabelled inputs) and widens the query and
splits the answers; the distillation steps themselves live in :mod:`fl_kd.kd.fedgems.server`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fl_kd.kd.fedgems.combiner import ClassCombiner, fit_class_combiner, fuse_by_combiner
from fl_kd.kd.fedgems.reliability import (
    UnlabelledTeacher,
    class_precision,
    confusion_matrix,
    fuse_by_reliability,
)
from fl_kd.kd.fedgems.screens import build_screens
from fl_kd.kd.fedgems.stats import SelectionStats
from fl_kd.kd.fedgems.teacher_cache import AnswerBlock, TeacherCache
from fl_kd.kd.seeding import SERVER_ID, derive_seed, torch_generator
from fl_kd.kd.training import check_logits, check_positions

if TYPE_CHECKING:
    from fl_kd.kd.fedgems.server_config import ServerDistillConfig

Answers = Mapping[int, tuple[NDArray[Any], NDArray[Any]]]


class RoundTeacher(NamedTuple):
    """What a round's unlabelled answers yield for the teacher cache."""

    teacher: tuple[Tensor, Tensor] | None
    """Unlabelled indices ``(n,)`` and fused teacher logits ``(n, C)`` kept, or None."""
    dropped: Tensor
    """Indices answered whose teacher was not kept (the confidence gate): the cache drops their old teachers."""
    block: AnswerBlock | None
    """The answers and fusion parameters behind the kept teachers (with a screen only: nothing else reads them)."""
    screened: set[int]
    """Clients the screens (canaries, consensus) left out this round."""


class ServerOptions:
    """State and bookkeeping of the optional extensions for one server.

    Parameters
    ----------
    config : ServerDistillConfig
        The server's settings.
    transfer_y : Tensor
        ``(N,)`` labels of the labelled transfer part.
    seed : int
        Base seed of the run: the held-out slice and each round's unlabelled subset derive from it.
    unlabelled_x : Tensor | None
        ``(M, ...)`` unlabelled inputs (public positions ``N..N+M-1``); needed when ``unlabelled_trust`` is on.
    unlabelled_y : Tensor | None
        ``(M,)`` their labels: the canaries' are the server's own (``canaries``); the rest are read only for the
        simulation's diagnostic figures.
    num_classes : int (default: 0)
        Number of classes C; needed (> 0) with ``unlabelled_cache``, whose teacher logits are ``(M, C)``.
    """

    def __init__(
        self,
        config: ServerDistillConfig,
        transfer_y: Tensor,
        seed: int,
        unlabelled_x: Tensor | None,
        unlabelled_y: Tensor | None = None,
        num_classes: int = 0,
    ) -> None:
        self.config = config
        self.transfer_y = transfer_y
        self.seed = seed
        num = int(transfer_y.shape[0])
        self.held_out: Tensor | None = None
        self.held_out_positions = np.zeros(0, dtype=np.int64)
        if config.correctness == "held_out":
            size = min(num - 1, max(1, round(config.held_out_fraction * num)))
            if size < 1:
                raise ValueError("correctness='held_out' needs at least two labelled transfer samples")
            order = torch.randperm(num, generator=torch_generator(derive_seed(seed, SERVER_ID, "held_out")))
            self.held_out_positions = np.sort(order[:size].numpy()).astype(np.int64)
            self.held_out = torch.zeros(num, dtype=torch.bool)
            self.held_out[torch.from_numpy(self.held_out_positions)] = True
        if config.unlabelled_trust == "learned" and num_classes > 0 and config.learned_prob_floor >= 1.0 / num_classes:
            # Checked here, where C is known, so that the run stops before round 1 rather than in round 1's fusion.
            raise ValueError(
                f"learned_prob_floor must lie in [0, 1/C) = [0, {1 / num_classes:g}) for {num_classes} classes, "
                f"got {config.learned_prob_floor}"
            )
        self.unlabelled_x: Tensor | None = None
        if config.unlabelled_trust != "none":
            if unlabelled_x is None or unlabelled_x.shape[0] == 0:
                raise ValueError(f"unlabelled_trust={config.unlabelled_trust!r} needs unlabelled transfer samples")
            self.unlabelled_x = unlabelled_x.cpu()
        self.unlabelled_y = None if unlabelled_y is None or self.unlabelled_x is None else unlabelled_y.cpu().long()
        self.canaries, self.consensus = build_screens(
            config, num_classes, self.unlabelled_y, self.num_unlabelled, seed, self.held_out is not None
        )
        self.teacher_cache: TeacherCache | None = None
        if config.unlabelled_cache and self.unlabelled_x is not None:
            self.teacher_cache = TeacherCache(self.num_unlabelled, num_classes)
        self._used: Tensor | None = None  # unlabelled indices of the last teacher (for its diagnostic figures)

    @property
    def screening(self) -> bool:
        """Whether a screen (canaries, consensus) may leave clients out of the unlabelled teacher."""
        return self.canaries is not None or self.consensus is not None

    @property
    def num_unlabelled(self) -> int:
        """Size M of the unlabelled part the server uses (0 when the option is off)."""
        return 0 if self.unlabelled_x is None else int(self.unlabelled_x.shape[0])

    def unlabelled_positions(self, round: int) -> NDArray[np.int64]:
        """Unlabelled indices ``j`` (public position ``N + j``) asked in ``round``: all, or a seeded subset."""
        return unlabelled_subset(self.num_unlabelled, self.config.unlabelled_per_round, self.seed, round)

    def widen_query(self, round: int, needed: Tensor, correct: Tensor) -> NDArray[np.int64]:
        """The query from the ``(N,)`` masks of needed and correctly classified labelled samples."""
        if self.config.distill_correct:
            trained_correct = correct if self.held_out is None else correct & ~self.held_out
            needed = needed | trained_correct
        if self.unlabelled_x is not None:
            needed = torch.ones_like(needed)  # reliability is measured on the whole labelled part
        labelled = np.flatnonzero(needed.numpy()).astype(np.int64)
        if self.unlabelled_x is None:
            return labelled
        return np.concatenate([labelled, needed.numel() + self.unlabelled_positions(round)])

    def split_answers(self, answers: Answers, num_labelled: int, num_classes: int) -> tuple[Answers, Answers]:
        """Validate answers over public positions, then split them into labelled and unlabelled (``j = p - N``)."""
        if self.unlabelled_x is None:
            return answers, {}
        labelled: dict[int, tuple[NDArray[Any], NDArray[Any]]] = {}
        unlabelled: dict[int, tuple[NDArray[Any], NDArray[Any]]] = {}
        for client_id in sorted(answers):
            positions, logits = answers[client_id]
            pos = check_positions(positions, num_labelled + self.num_unlabelled)
            values = check_logits(f"logits of client {client_id}", logits, (pos.size, num_classes)).numpy()
            low = pos < num_labelled
            labelled[client_id] = (pos[low], values[low])
            unlabelled[client_id] = (pos[~low] - num_labelled, values[~low])
        return labelled, unlabelled

    def unlabelled_teacher(
        self, round: int, labelled: Answers, unlabelled: Answers, num_classes: int, stats: SelectionStats
    ) -> tuple[Tensor, Tensor] | None:
        """``(x, teacher logits)`` to distil on the unlabelled part: this round's fused teacher on the samples some
        client answered, plus (``unlabelled_cache``) the cached teachers of the last rounds; None when there is none.

        None also when the confidence gate left no sample and the cache holds none: a pass over zero samples would
        still step the optimiser (momentum and weight decay) and report a NaN loss.
        """
        if self.unlabelled_x is None:
            return None
        round_teacher = self._fresh_teacher(labelled, unlabelled, num_classes, stats)
        fresh = round_teacher.teacher
        if self.teacher_cache is not None:
            if self.screening:  # what a client caught now taught before it was caught goes too
                refused, purged = self.teacher_cache.refuse_without(round_teacher.screened, self._refuse)
                stats.extra["canary_refused"], stats.extra["canary_purged"] = refused, purged
            self.teacher_cache.forget(round_teacher.dropped)
            if fresh is not None:
                self.teacher_cache.update(*fresh, round, round_teacher.block)
            fresh = self.teacher_cache.select(round, self.config.unlabelled_cache)
            stats.extra["unlabelled_distilled"] = int(fresh[0].numel())
        if fresh is None or fresh[0].numel() == 0:
            return None
        index, logits = fresh
        self._used = index
        return self.unlabelled_x[index], logits

    def _fresh_teacher(
        self, labelled: Answers, unlabelled: Answers, num_classes: int, stats: SelectionStats
    ) -> RoundTeacher:
        """This round's fused teacher on the unlabelled answers, canaries and screened clients out."""
        screened: set[int] = set()
        if self.screening:
            unlabelled, screened = self._screen(labelled, unlabelled, num_classes, stats)
            stats.screened = screened
        clients = sorted(unlabelled)
        union = np.unique(np.concatenate([unlabelled[c][0] for c in clients])) if clients else np.zeros(0, np.int64)
        stats.extra["n_unlabelled"] = 0
        if union.size == 0:
            return RoundTeacher(None, torch.zeros(0, dtype=torch.int64), None, screened)
        stacked, available = _stack(unlabelled, clients, union, num_classes)
        params = self._fusion_params(labelled, clients, num_classes, stats)
        fused, keep = self._fuse(params, stacked, available)
        stats.extra["n_unlabelled"] = int(keep.sum())
        for k, client_id in enumerate(clients):
            stats.weight_mass[client_id] = stats.weight_mass.get(client_id, 0.0) + float(fused.weights[k][keep].sum())
        answered = torch.from_numpy(union)
        block = None
        if self.screening:  # kept so that a client caught later can be fused out again
            block = {
                "indices": answered[keep],
                "clients": torch.tensor(clients, dtype=torch.int64),
                "answers": stacked[:, keep],
                "available": available[:, keep],
                **params,
            }
        return RoundTeacher((answered[keep], fused.logits[keep]), answered[~keep], block, screened)

    def _fusion_params(
        self, labelled: Answers, clients: list[int], num_classes: int, stats: SelectionStats
    ) -> dict[str, Tensor]:
        """This round's trust in ``clients``, measured on their labelled answers: the learned combiner's weights, or
        each client's per-class precision."""
        if self.config.unlabelled_trust == "learned":
            fit = self._combiner_fit_data(labelled, clients, num_classes)
            combiner = self._fit_combiner(fit)
            stats.extra["combiner_samples"] = int(fit["fit_labels"].numel())
            if fit["fit_labels"].numel():
                stats.extra["combiner_loss"] = combiner.loss
            return {"weight": combiner.weight, "bias": combiner.bias, **fit}
        precision = torch.zeros(len(clients), num_classes)
        for k, client_id in enumerate(clients):
            pos, values = self._labelled_answers(labelled, client_id, num_classes)
            labels = self.transfer_y[torch.from_numpy(pos)]
            precision[k] = class_precision(confusion_matrix(torch.from_numpy(values), labels, num_classes))
        return {"precision": precision}

    def _fuse(
        self, params: Mapping[str, Tensor], stacked: Tensor, available: Tensor
    ) -> tuple[UnlabelledTeacher, Tensor]:
        """The teacher of ``(K, n, C)`` answers under ``params`` (:meth:`_fusion_params`), and which to keep."""
        if self.config.unlabelled_trust == "learned":
            combiner = ClassCombiner(
                params["weight"], params["bias"], float("nan"), self.config.learned_prob_floor, self.config.learned_trim
            )
            fused = fuse_by_combiner(stacked, available, combiner)
        else:
            fused = fuse_by_reliability(stacked, available, params["precision"], self.config.reliability_power)
        # The fused logits are log-probabilities: a gate on the teacher's own confidence keeps only what it is sure of.
        confident = fused.logits.exp().max(dim=1).values >= self.config.teacher_min_confidence
        return fused, fused.has_teacher & confident

    def _refuse(
        self, params: Mapping[str, Tensor], members: Tensor, stacked: Tensor, available: Tensor
    ) -> tuple[Tensor, Tensor]:
        """A cached round's teachers fused again from the answers of its clients still ``members``
        (:meth:`TeacherCache.refuse_without`): their precision stands alone, the combiner is fitted again."""
        if self.config.unlabelled_trust == "learned":
            fit = {key: params[key][members] for key in ("fit_answers", "fit_available")}
            combiner = self._fit_combiner({**fit, "fit_labels": params["fit_labels"]})
            trust = {"weight": combiner.weight, "bias": combiner.bias}
        else:
            trust = {"precision": params["precision"][members]}
        fused, keep = self._fuse(trust, stacked[members], available[members])
        return fused.logits, keep

    def _screen(
        self, labelled: Answers, unlabelled: Answers, num_classes: int, stats: SelectionStats
    ) -> tuple[Answers, set[int]]:
        """The unlabelled answers of the clients no screen leaves out, canaries removed; and the clients left out.

        Both screens compare a client where it knows it is checked (the reliability slice) with where it cannot
        tell: the canaries by its accuracy, the consensus by its agreement with the other clients.
        """
        flagged: set[int] = set()
        reference = {c: self._labelled_answers(labelled, c, num_classes) for c in unlabelled}
        if self.consensus is not None:
            outliers, scores = self.consensus.screen(unlabelled, reference)
            stats.extra["consensus_screened"] = len(outliers)
            stats.extra["consensus_z_max"] = max(scores.values(), default=0.0)
            for family, by_client in self.consensus.family_scores.items():  # which test came closest to screening
                stats.extra[f"consensus_z_{family}"] = max(by_client.values(), default=0.0)
            flagged |= outliers
        if self.canaries is not None:
            truth = {c: (values.argmax(axis=1), self.transfer_y.numpy()[pos]) for c, (pos, values) in reference.items()}
            caught, scores = self.canaries.screen(unlabelled, truth)
            stats.extra["canary_screened"] = len(caught)
            stats.extra["canary_z_max"] = max(scores.values(), default=0.0)
            if self.canaries.burst_z:
                stats.extra["canary_burst_z_max"] = max(self.canaries.burst_scores.values(), default=0.0)
            flagged |= caught
        kept = {c: answer for c, answer in unlabelled.items() if c not in flagged}
        return (self.canaries.strip(kept) if self.canaries is not None else kept), flagged

    def _labelled_answers(
        self, labelled: Answers, client_id: int, num_classes: int
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """A client's labelled answers on the slice its trust is measured on (:meth:`_reliability_slice`)."""
        pos, values = labelled.get(client_id, (np.zeros(0, np.int64), np.zeros((0, num_classes), np.float32)))
        pos, values = self._reliability_slice(np.asarray(pos, dtype=np.int64), np.asarray(values))
        return pos, np.asarray(values, dtype=np.float32)

    def _combiner_fit_data(self, labelled: Answers, clients: list[int], num_classes: int) -> dict[str, Tensor]:
        """The clients' answers on the held-out slice and its labels, which the combiner is fitted on.

        The slice's labels never reach a client nor the server's loss, so nobody's answers there carry them.
        """
        answers = {c: self._labelled_answers(labelled, c, num_classes) for c in clients}
        slice_answers = {c: answers[c] for c in clients if answers[c][0].size}
        fit_union = (
            np.unique(np.concatenate([pos for pos, _ in slice_answers.values()]))
            if slice_answers
            else np.zeros(0, np.int64)
        )
        fit_logits, fit_available = _stack(answers, clients, fit_union, num_classes)
        labels = self.transfer_y[torch.from_numpy(fit_union)]
        return {"fit_answers": fit_logits, "fit_available": fit_available, "fit_labels": labels}

    def _fit_combiner(self, fit: Mapping[str, Tensor]) -> ClassCombiner:
        """The per-client, per-class combiner fitted on :meth:`_combiner_fit_data`."""
        return fit_class_combiner(
            fit["fit_answers"],
            fit["fit_available"],
            fit["fit_labels"],
            self.config.learned_weight_decay,
            prob_floor=self.config.learned_prob_floor,
            trim=self.config.learned_trim,
        )

    def _reliability_slice(self, positions: NDArray[np.int64], values: NDArray[Any]) -> tuple[NDArray[np.int64], Any]:
        """A client's labelled answers its reliability is measured on: all, or those on the held-out slice."""
        if self.config.reliability_on != "held_out" or self.held_out is None:
            return positions, values
        keep = self.held_out.numpy()[positions]
        return positions[keep], values[keep]

    def label_free_positions(self) -> NDArray[np.int64]:
        """Labelled positions whose labels the clients must not train on: the held-out slice, if any.

        The server distils the clients' answers there; had they trained on its labels, it would learn the labels
        through them, and its correctness there would be memorisation again. Their precision there stays honest too.
        """
        return self.held_out_positions

    @torch.no_grad()
    def teacher_figures(
        self, teacher: tuple[Tensor, Tensor], predict: Callable[[Tensor], Tensor], stats: SelectionStats
    ) -> None:
        """Simulation-only diagnostics: the teacher's and the server's accuracy where the teacher is used.

        They say whether the clients know something the server does not; the true labels behind them never reach
        a loss.
        """
        if self.unlabelled_y is None or self._used is None or self._used.numel() == 0:
            return
        x, logits = teacher
        labels = self.unlabelled_y[self._used]
        stats.extra["teacher_unlabelled_accuracy"] = float((logits.argmax(dim=1) == labels).double().mean())
        stats.extra["server_unlabelled_accuracy"] = float((predict(x).argmax(dim=1) == labels).double().mean())


def _stack(answers: Answers, clients: list[int], union: NDArray[np.int64], num_classes: int) -> tuple[Tensor, Tensor]:
    """``(K, len(union), C)`` logits of ``clients`` at the positions ``union`` and the ``(K, len(union))``
    availability mask (each client's positions must lie in ``union``)."""
    stacked = torch.zeros(len(clients), union.size, num_classes)
    available = torch.zeros(len(clients), union.size, dtype=torch.bool)
    for k, client_id in enumerate(clients):
        pos, values = answers[client_id]
        slots = torch.from_numpy(np.searchsorted(union, pos))
        stacked[k, slots] = torch.from_numpy(np.asarray(values, dtype=np.float32))
        available[k, slots] = True
    return stacked, available


def unlabelled_subset(total: int, per_round: int, seed: int, round: int) -> NDArray[np.int64]:
    """Sorted indices of ``round``'s unlabelled subset: ``per_round`` of ``total`` drawn from ``(seed, round)``;
    all of them when ``per_round`` is 0 or not smaller than ``total``."""
    if per_round == 0 or per_round >= total:
        return np.arange(total, dtype=np.int64)
    order = torch.randperm(total, generator=torch_generator(derive_seed(seed, SERVER_ID, round, "unlabelled")))
    return np.sort(order[:per_round].numpy()).astype(np.int64)
