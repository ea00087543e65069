"""FedGEMS' two halves for the generic runtimes: the selective-distillation server and the distilling client.

Train: the server asks each sampled client for logits on the transfer positions it still needs (wrong and not
cached); the client trains on private data, then answers. Evaluate: the server broadcasts its logits on the whole
transfer set and the client distils them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.fedgems.server import SelectiveDistillServer
from fl_kd.kd.losses import kd_loss
from fl_kd.kd.roles import Answer, Arrays, DistillClientRole, Instruction, Phase, ServerRole
from fl_kd.kd.seeding import derive_seed, torch_generator
from fl_kd.kd.training import accuracy, check_positions, cpu_state_dict, from_wire, wire_dtype
from fl_kd.kd.validation import DEFAULT_MAX_ABS_VALUE, check_answer_logits


class FedGEMSServer(ServerRole):
    """The selective-distillation server: query on demand, screen, distil, broadcast.

    ``max_abs_value`` bounds every float logit of an answer (``ExperimentConfig.max_abs_value``).
    """

    def __init__(
        self,
        server: SelectiveDistillServer,
        logits_dtype: str = "float32",
        client_unlabelled: bool = False,
        max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    ) -> None:
        self.server = server
        self.logits_dtype = logits_dtype
        self.client_unlabelled = client_unlabelled
        self.max_abs_value = float(max_abs_value)
        self._unlabelled: Arrays = {}
        self._weight_mass: dict[int, float] = {}
        self._screened: frozenset[int] = frozenset()
        self._round = -1
        self._query: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._broadcast: NDArray[Any] = np.zeros((0, 0), dtype=wire_dtype(logits_dtype))

    def _query_of(self, round: int) -> NDArray[np.int64]:
        # Asked once per round: the server does not change while the clients train.
        if round != self._round:
            self._round, self._query = round, self.server.needed_positions(round)
        return self._query

    def train_instruction(self, round: int, client_id: int) -> Instruction:
        """The transfer positions the server still needs, and the logits' wire dtype."""
        return Instruction({kd.POSITIONS: self._query_of(round)}, {kd.LOGITS_DTYPE: self.logits_dtype})

    def answer_names(self, round: int, client_id: int) -> frozenset[str] | None:
        """Logits only."""
        return frozenset({kd.LOGITS})

    def check_answer(self, round: int, client_id: int, arrays: Mapping[str, Any]) -> str | None:
        """Logits only, one row per position asked, in the order asked: which samples they answer is the server's
        own query, never the client's word (and the uplink carries no positions back)."""
        if set(arrays) != {kd.LOGITS}:
            return f"arrays {sorted(arrays)} are not [{kd.LOGITS!r}]"
        return check_answer_logits(
            self._query_of(round).size,
            arrays[kd.LOGITS],
            self.server.num_classes,
            max_abs=self.max_abs_value,
            wire=self.logits_dtype,
        )

    def aggregate(self, round: int, answers: Mapping[int, Arrays]) -> dict[str, float | int]:
        """Selective distillation from the accepted answers; then the broadcast logits are ready."""
        query = self._query_of(round)
        stats = self.server.distill(round, {cid: (query, arrays[kd.LOGITS]) for cid, arrays in answers.items()})
        self._broadcast = self.server.transfer_logits(self.logits_dtype)
        self._weight_mass = dict(stats.weight_mass)
        self._screened = frozenset(stats.screened)
        if self.client_unlabelled:
            positions, logits = self.server.unlabelled_logits(round, self.logits_dtype)
            self._unlabelled = {kd.UNLABELLED_POSITIONS: positions, kd.UNLABELLED_LOGITS: logits}
        return stats.round_metrics()

    def fusion_weights(self) -> dict[int, float]:
        """Client id -> its share of the last round's teacher weight (labelled and unlabelled samples together)."""
        total = sum(self._weight_mass.values())
        return {cid: (mass / total if total > 0 else 0.0) for cid, mass in sorted(self._weight_mass.items())}

    def screened_clients(self) -> frozenset[int] | None:
        """The clients the server's screens left out of the last round's unlabelled teacher; None without a screen."""
        return self._screened if self.server.options.screening else None

    def evaluate_instruction(self, round: int, client_id: int) -> Instruction:
        """The server's logits on the whole labelled part (and on the round's unlabelled subset, if asked)."""
        label_free = self.server.options.label_free_positions()
        key = kd.WITHHELD_POSITIONS if self.server.config.held_out_server_labels else kd.LABEL_FREE_POSITIONS
        extra = {key: label_free} if label_free.size else {}
        return Instruction({kd.SERVER_LOGITS: self._broadcast, **self._unlabelled, **extra})

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """The server model's accuracy."""
        return self.server.evaluate(x, y)

    def save(self, path: str | Path) -> None:
        """Server model and knowledge cache, for a later federation to start from."""
        self.server.save(path)


_QUERY = frozenset({kd.POSITIONS})
_KNOWLEDGE = frozenset(
    {kd.SERVER_LOGITS, kd.LABEL_FREE_POSITIONS, kd.WITHHELD_POSITIONS, kd.UNLABELLED_POSITIONS, kd.UNLABELLED_LOGITS}
)


class FedGEMSClient(DistillClientRole):
    """A client that trains locally, answers queries with logits and distils the server's broadcast.

    Parameters
    ----------
    client : DistillClient
        The client's model, data and settings.
    finetune_epochs : int (default: 0)
        Epochs on private data after each distillation (0: FedGEMS, none).
    personal : bool (default: False)
        Fine-tune a personal copy instead of the model itself. Fine-tuning the one model trades what it learnt
        from the server for its own label mix (at alpha 0.5: +6.5 points on its own test data, -11 on the global
        one). With a personal copy the client keeps two models, as in Ditto (Li et al., "Ditto: Fair and Robust
        Federated Learning Through Personalization", ICML 2021): the shared one trains on private data, answers
        the server and distils its knowledge; the personal one serves the client's own distribution
        (:meth:`evaluate_personal`).
    personal_prox : float | None (default: None)
        How the personal model is kept. None: it is the shared model after distillation, fine-tuned afresh each
        round (what one round of fine-tuning reaches). A number ``lambda >= 0``: Ditto's personal model, kept
        across rounds (started from the shared one at its first fine-tuning) and trained each round on private
        data with ``lambda / 2 * ||v - w||^2`` pulling it towards the shared model ``w`` of that round. Under
        strong label skew one epoch from the shared model is not enough to learn the client's own classes back
        (2 classes per client: 0.75-0.78 against local-only's 0.97-0.98 for the small tiers); a kept model
        accumulates its epochs as local-only training does. Measured at lambda 0.1 (one seed): 0.82-0.95, better
        than the copy and still below local-only (BENCHMARKS_KD.md).
    personal_prior : bool (default: False)
        Predict on the client's own distribution with the log of its own label frequencies (Laplace-smoothed)
        added to the logits of the personal model, or of the shared one when there is none: Bayes' rule for a
        test distribution whose label prior the client knows from its data, with no training at all.
    tail_average : float (default: 0.0)
        Share of each training phase's last steps whose weights the client averages and shows in place of the
        trained ones (answers, evaluation): :meth:`~fl_kd.kd.client.DistillClient.keep_weight_average`. 0: none.
        With ``personal`` the shared model shows the average of its own phases, and the personal model is the
        average of its fine-tuning's last steps.
    anchor : float (default: 0.0)
        Weight of the server's knowledge in local training (learning without forgetting: Li & Hoiem, "Learning
        without Forgetting", ECCV 2016). The client keeps the server's logits of its last distillation (labelled part
        and unlabelled subset) and each local step adds ``anchor * KD(server -> client)`` on a batch of those
        inputs drawn at random (seeded), so training on its own label mix does not erase what it learnt of the
        others, and its answers carry both. 0: cross-entropy alone.
    keep_distilled : bool (default: False)
        Keep a copy of the model as it stands after distilling the server's knowledge, before fine-tuning, and
        score it on the global test set (:meth:`evaluate`); the fine-tuned model goes on as without the copy (it
        trains, answers the server and serves the client's own distribution). Fine-tuning on private data trades
        what the client learnt from the server for its own label mix; the copy is that knowledge, kept for inputs
        beyond the client's own classes, with the training, the answers and so the server unchanged. Needs
        ``finetune_epochs >= 1`` and not ``personal`` (whose shared model is never fine-tuned).
    """

    PERSONAL = "personal."
    """Prefix of the personal model's weights in :meth:`state_dict`."""
    PERSONAL_ROUNDS = "personal_rounds"
    """Key of the number of rounds the kept (Ditto) personal model has trained, in :meth:`state_dict`."""
    DISTILLED = "distilled."
    """Prefix of the kept distilled model's weights in :meth:`state_dict` (``keep_distilled``)."""
    ANCHOR_POSITIONS, ANCHOR_LOGITS = "anchor.positions", "anchor.logits"
    """Keys of the kept server knowledge (``anchor``) in :meth:`state_dict`: public positions and their logits."""

    def __init__(
        self,
        client: DistillClient,
        finetune_epochs: int = 0,
        personal: bool = False,
        personal_prox: float | None = None,
        personal_prior: bool = False,
        tail_average: float = 0.0,
        keep_distilled: bool = False,
        anchor: float = 0.0,
    ) -> None:
        super().__init__(client)
        if not anchor >= 0.0:
            raise ValueError(f"anchor must be >= 0, got {anchor}")
        self.anchor = float(anchor)
        self.anchor_set: tuple[Tensor, Tensor] | None = None  # (public positions, server logits), kept at distillation
        if tail_average:
            client.keep_weight_average(tail_average)
        if finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
        if personal and not finetune_epochs:
            raise ValueError("a personal model needs finetune_epochs >= 1 (it is the fine-tuned copy)")
        if keep_distilled and (personal or not finetune_epochs):
            raise ValueError("keep_distilled needs finetune_epochs >= 1 and personal=False")
        if personal_prox is not None and (not personal or not personal_prox >= 0.0):
            raise ValueError(f"personal_prox must be >= 0 and needs personal=True, got {personal_prox}")
        self.finetune_epochs = finetune_epochs
        self.personal_model: nn.Module | None = copy.deepcopy(client.model) if personal else None
        self.personal_prox = personal_prox
        self.personal_rounds = 0
        self.keep_distilled = keep_distilled
        self.distilled_model: nn.Module | None = None  # made at the first distillation
        self.log_prior: Tensor | None = None
        if personal_prior:
            counts = torch.bincount(client.train_y, minlength=client.num_classes).double() + 1.0
            self.log_prior = (counts / counts.sum()).log().float()

    def train(self, round: int, instruction: Instruction) -> Answer:
        """Local training, then logits on the asked positions."""
        positions, dtype = self.checked_query(instruction)
        result = self.client.local_train(round, self._anchor_penalty(round))
        if positions.size and positions.max() >= self.client.transfer_x.shape[0]:
            logits = self.client.public_logits(positions, dtype)  # the query reaches into the unlabelled part
        else:
            logits = self.client.logits(positions, dtype)
        return Answer(
            {kd.LOGITS: logits},
            {
                kd.TRAIN_LOSS: float(result["loss"]),
                kd.NUM_EXAMPLES: float(result["num_examples"]),
                kd.TRAIN_SAMPLES: float(result["train_samples"]),
            },
        )

    def instruction_names(self, phase: Phase) -> frozenset[str]:
        """The query's positions to train; the server's logits (and the positions they spare or leave out) to
        take in."""
        return _QUERY if phase == "train" else _KNOWLEDGE

    def receive(self, round: int, instruction: Instruction) -> dict[str, float]:
        """Distil the server's logits."""
        server_logits = instruction.arrays.get(kd.SERVER_LOGITS)
        if server_logits is None:
            raise ValueError(f"asked to distil but the message has no {kd.SERVER_LOGITS}")
        arrays = instruction.arrays
        result = self.client.distill(
            round, server_logits, arrays.get(kd.LABEL_FREE_POSITIONS), arrays.get(kd.WITHHELD_POSITIONS)
        )
        metrics = {kd.DISTILL_LOSS: float(result["loss"]), kd.TRAIN_SAMPLES: float(result["train_samples"])}
        if kd.UNLABELLED_POSITIONS in instruction.arrays or kd.UNLABELLED_LOGITS in instruction.arrays:
            metrics[kd.TRAIN_SAMPLES] += self._distill_unlabelled(round, instruction)
        if self.anchor:  # after both distillations, which check the logits' shapes and positions
            self._keep_anchor(server_logits, instruction)
        if self.keep_distilled:
            self._keep_distilled(self.client.shown_model.state_dict())
        if self.finetune_epochs:
            metrics[kd.TRAIN_SAMPLES] += self._finetune(round)
        return metrics

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on the global test set: of the kept distilled model once there is one, else of the model."""
        if self.distilled_model is None:
            return super().evaluate(x, y)
        return accuracy(self.distilled_model, x, y, device=self.client.device)

    def evaluated_model(self) -> nn.Module | None:
        """The kept distilled model once there is one, else the shown model: what :meth:`evaluate` scores."""
        return self.distilled_model if self.distilled_model is not None else super().evaluated_model()

    def evaluate_personal(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on the client's own distribution: of the personal model when there is one, with the client's
        label prior when asked."""
        model = self.client.shown_model if self.personal_model is None else self.personal_model
        return accuracy(model, x, y, device=self.client.device, logit_offset=self.log_prior)

    def state_dict(self) -> dict[str, Tensor]:
        """The model's weights, the personal model's under :attr:`PERSONAL` (with its round count) and the kept
        distilled model's under :attr:`DISTILLED`."""
        state = super().state_dict()
        if self.distilled_model is not None:
            state |= {self.DISTILLED + k: v for k, v in cpu_state_dict(self.distilled_model).items()}
        if self.personal_model is not None:
            state |= {self.PERSONAL + k: v for k, v in cpu_state_dict(self.personal_model).items()}
            state[self.PERSONAL_ROUNDS] = torch.tensor(self.personal_rounds, dtype=torch.int64)
        if self.anchor_set is not None:
            state[self.ANCHOR_POSITIONS], state[self.ANCHOR_LOGITS] = self.anchor_set
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        own = (self.PERSONAL, self.DISTILLED, self.ANCHOR_POSITIONS, self.ANCHOR_LOGITS)
        shared = {k: v for k, v in state.items() if not k.startswith(own) and k != self.PERSONAL_ROUNDS}
        if self.anchor and self.ANCHOR_POSITIONS in state and self.ANCHOR_LOGITS in state:
            self.anchor_set = (state[self.ANCHOR_POSITIONS].long(), state[self.ANCHOR_LOGITS].float())
        super().load_state_dict(shared)
        distilled = {k[len(self.DISTILLED) :]: v for k, v in state.items() if k.startswith(self.DISTILLED)}
        if distilled and self.keep_distilled:
            self._keep_distilled(distilled)
        if self.personal_model is not None:
            size = len(self.PERSONAL)
            self.personal_model.load_state_dict({k[size:]: v for k, v in state.items() if k.startswith(self.PERSONAL)})
            rounds = state.get(self.PERSONAL_ROUNDS)
            self.personal_rounds = int(rounds) if rounds is not None else 0

    def _keep_anchor(self, server_logits: Any, instruction: Instruction) -> None:
        """Keep the server's logits just distilled, on the labelled part (but its withheld positions) and the
        unlabelled subset sent."""
        labelled = int(self.client.transfer_x.shape[0])
        positions = [torch.arange(labelled)]
        classes = self.client.num_classes
        logits = [torch.from_numpy(from_wire(np.asarray(server_logits), classes))]
        withheld = instruction.arrays.get(kd.WITHHELD_POSITIONS)
        if withheld is not None:
            keep = torch.ones(labelled, dtype=torch.bool)
            keep[torch.from_numpy(check_positions(withheld, labelled))] = False
            positions, logits = [positions[0][keep]], [logits[0][keep]]
        unlabelled = instruction.arrays.get(kd.UNLABELLED_POSITIONS)
        if unlabelled is not None and len(unlabelled):
            positions.append(torch.from_numpy(np.asarray(unlabelled, dtype=np.int64)))
            logits.append(torch.from_numpy(from_wire(np.asarray(instruction.arrays[kd.UNLABELLED_LOGITS]), classes)))
        self.anchor_set = (torch.cat(positions), torch.cat(logits))

    def _anchor_penalty(self, round: int) -> Callable[[], Tensor] | None:
        """``anchor * KD(server -> client)`` on a seeded random batch of the kept server knowledge; None without."""
        if not self.anchor or self.anchor_set is None:
            return None
        client, weight = self.client, self.anchor
        positions, logits = self.anchor_set
        generator = torch_generator(derive_seed(client.seed, client.client_id, round, "anchor"))
        size = client.config.batch_size

        def penalty() -> Tensor:
            pick = torch.randint(0, int(positions.numel()), (size,), generator=generator)
            student = client.model(client.public_x[positions[pick]].to(client.device))
            return weight * kd_loss(student, logits[pick].to(client.device), client.config.temperature)

        return penalty

    def _keep_distilled(self, weights: Mapping[str, Tensor]) -> None:
        """Load ``weights`` into the kept distilled model, made from the client model the first time."""
        if self.distilled_model is None:
            self.distilled_model = copy.deepcopy(self.client.model)
        self.distilled_model.load_state_dict(weights)

    def _distill_unlabelled(self, round: int, instruction: Instruction) -> float:
        """Pure KD towards the server's logits on the unlabelled positions it sent; the samples trained on."""
        positions = instruction.arrays.get(kd.UNLABELLED_POSITIONS)
        logits = instruction.arrays.get(kd.UNLABELLED_LOGITS)
        if positions is None or logits is None:
            raise ValueError(f"{kd.UNLABELLED_POSITIONS} and {kd.UNLABELLED_LOGITS} must come together")
        if positions.size and int(positions.min()) < self.client.transfer_x.shape[0]:
            raise ValueError(f"{kd.UNLABELLED_POSITIONS} must lie in the unlabelled part")
        epochs = self.client.config.distill_epochs
        return self.client.distill_on(round, "distill_unlabelled", positions, logits, epochs)["train_samples"]

    def _finetune(self, round: int) -> float:
        """Cross-entropy on private data after distillation; the number of samples trained on.

        With a personal model the client's model is trained in its place, copied into the personal one and put
        back as it was (the one training loop serves both; the copy costs two state copies of a small model). It
        starts from the shared model, or, for a kept (Ditto) personal model after its first round, from the
        personal one, with the pull towards the shared weights added to the loss. With a weight average the
        personal model becomes the fine-tuning's average, and the shared model's average is put back too.
        """
        if self.personal_model is None:
            return self.client.train_supervised(round, "finetune", self.finetune_epochs)["train_samples"]
        model, average = self.client.model, self.client.average
        shared = copy.deepcopy(model.state_dict())
        shared_average = None if average is None else copy.deepcopy(average.state_dict())
        penalty = None
        if self.personal_prox is not None and self.personal_rounds > 0:
            anchors = [p.detach().clone() for p in model.parameters()]  # the shared model w of this round
            model.load_state_dict(self.personal_model.state_dict())
            strength = 0.5 * self.personal_prox

            def pull() -> Tensor:
                squares = [(p - a).pow(2).sum() for p, a in zip(model.parameters(), anchors, strict=True)]
                return strength * torch.stack(squares).sum()

            penalty = pull if strength > 0 else None  # lambda 0: no term to add at every step

        samples = self.client.train_supervised(round, "finetune", self.finetune_epochs, penalty=penalty)[
            "train_samples"
        ]
        self.personal_model.load_state_dict(self.client.shown_model.state_dict())
        model.load_state_dict(shared)
        if average is not None and shared_average is not None:
            average.load_state_dict(shared_average)
        self.personal_rounds += 1
        return samples
