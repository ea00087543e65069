"""FedDF's server for the generic runtimes: per-architecture FedAvg, then ensemble distillation.

Train is FedAvg's (:mod:`fl_kd.kd.fedavg.roles`): each sampled client gets its architecture's weights, trains
locally and answers with weights and sample count; the client half is FedAvg's :class:`WeightSharingClient`.
The server averages per architecture, forms the ensemble teacher on the transfer set's inputs (labels never read),
distils it into every architecture prototype and into the large server model. Evaluate: each sampled client
receives its architecture's distilled weights. A robust ``strategy.aggregation`` (median, trimmed mean, Krum) fuses
both the weights of each architecture and the members' logits into the teacher.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fl_kd.kd.fedavg.roles import WeightSharingServer, split_answer
from fl_kd.kd.feddf.config import FedDFConfig
from fl_kd.kd.feddf.distill import distill_into, ensemble_logits
from fl_kd.kd.fusion import LOGIT_AGGREGATIONS
from fl_kd.kd.roles import Arrays
from fl_kd.kd.seeding import SERVER_ID, derive_seed
from fl_kd.kd.training import predict_logits
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE
from fl_kd.kd.weights import load_arrays, model_arrays, within_headroom

log = logging.getLogger(__name__)

#: Distillation phase of the server model (architecture prototypes use ``feddf_distill_<architecture>``).
SERVER_MODEL_PHASE = "feddf_distill_server_model"


class FedDFServer(WeightSharingServer):
    """Architecture prototypes fused by ensemble distillation, and a large server model distilled alongside.

    Parameters
    ----------
    models, architecture_of, max_examples
        The prototypes (architecture name -> freshly seeded global model), per client id its architecture, and the
        largest sample count a client may claim, as for :class:`~fl_kd.kd.fedavg.roles.WeightSharingServer`.
    server_model : nn.Module
        The large server model (``device_profile.server_model``); the server's reported accuracy is its.
    public_x : Tensor
        ``(N, *input_shape)`` inputs of the whole transfer set (labelled part first): the distillation data.
    config : FedDFConfig
        Ensemble and distillation settings.
    seed : int (default: 0)
        Base seed; each distillation is seeded by ``(seed, SERVER_ID, round, phase)``.
    device : torch.device | str (default: "cpu")
        Where the server's models live and train.
    max_abs_value : float (default: 1e4)
        Bound on an answer's weights; a prototype distilled beyond its headroom is not published (as for
        :class:`~fl_kd.kd.fedavg.roles.WeightSharingServer`).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        architecture_of: Sequence[str],
        max_examples: int,
        server_model: nn.Module,
        public_x: Tensor,
        config: FedDFConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        super().__init__(models, architecture_of, max_examples, device, max_abs_value)
        if public_x.shape[0] == 0:
            raise ValueError("FedDF distils on the transfer set, which is empty")
        self._server_model = server_model.to(self.device)
        self.public_x = public_x.cpu()
        self.config = config
        self.seed = seed

    @property
    def server_model(self) -> nn.Module:
        """The large server model."""
        return self._server_model

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """Average per architecture, then distil the ensemble into every prototype and the server model.

        A round without accepted answers changes nothing. Every prototype is distilled, also one whose clients
        were not sampled, so each architecture takes in the round's knowledge.
        """
        members = self.average(round, answers)
        stats: dict[str, float | int] = {"num_answered": len(answers), "distill_loss": 0.0, "server_loss": 0.0}
        if not answers:
            return stats
        teacher = self._ensemble(self._teachers(answers, members))
        cfg = self.config
        losses = []
        for name, model in self.models.items():
            phase_seed = derive_seed(self.seed, SERVER_ID, round, f"feddf_distill_{name}")
            losses.append(self._distill(model, teacher, cfg.distill_epochs, cfg.distill_lr, phase_seed))
            distilled = model_arrays(model)
            if within_headroom(distilled, self.max_abs_value):
                self.published[name] = distilled
            else:  # the averaged prototype stays what clients get
                log.warning("%s: distillation took a weight beyond its headroom; the prototype is kept", name)
                load_arrays(model, self.published[name], self.max_abs_value)
        phase_seed = derive_seed(self.seed, SERVER_ID, round, SERVER_MODEL_PHASE)
        stats["distill_loss"] = math.fsum(losses) / len(losses)
        stats["server_loss"] = self._distill(self.server_model, teacher, cfg.server_epochs, cfg.server_lr, phase_seed)
        return stats

    def _ensemble(self, teachers: Iterator[nn.Module]) -> Tensor:
        """The teacher: the members' mean logits, or their robust fusion (``strategy.aggregation``, no label read)."""
        if self.aggregation == "mean":
            return ensemble_logits(teachers, self.public_x, self.device)
        # Each member's logits are taken at once: the scratch models are reloaded for the next member.
        stacked = np.stack([predict_logits(m, self.public_x, device=self.device).double().numpy() for m in teachers])
        unknown = np.full(stacked.shape[1], -1, dtype=np.int64)
        fused = LOGIT_AGGREGATIONS.get(self.aggregation)(stacked, unknown, self.robust)
        return torch.from_numpy(fused.logits).float()

    def _teachers(self, answers: Mapping[int, Arrays], members: Mapping[str, list[int]]) -> Iterator[nn.Module]:
        """The ensemble's members, one at a time: each accepted client's model, or each answered architecture's
        average (in client id or architecture name order)."""
        if self.config.ensemble == "prototypes":
            yield from (self.models[name] for name in sorted(members))
            return
        scratch: dict[str, nn.Module] = {}
        for client_id in sorted(answers):
            name = self.architecture_of[client_id]
            model = scratch.setdefault(name, copy.deepcopy(self.models[name]))
            load_arrays(model, split_answer(answers[client_id])[0], self.max_abs_value)
            yield model

    def _distill(self, model: nn.Module, teacher: Tensor, epochs: int, lr: float, seed: int) -> float:
        cfg = self.config
        return distill_into(
            model,
            self.public_x,
            teacher,
            epochs=epochs,
            batch_size=cfg.distill_batch_size,
            lr=lr,
            temperature=cfg.temperature,
            seed=seed,
            device=self.device,
        )
