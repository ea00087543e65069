"""Settings of FedGEMS-like selective distillation (``conf/strategy/fedgems.yaml`` is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_kd.config import absolute_path, check_choice, check_range, require, require_defaults_unless
from fl_kd.kd.algorithm import SGDStrategyConfig
from fl_kd.kd.client import ClientTrainConfig
from fl_kd.kd.fedgems.server_config import SelectionConfig, ServerDistillConfig
from fl_kd.kd.fusion import FUSION_RULES
from fl_kd.kd.training import LOGITS_DTYPES
from fl_kd.models import DeviceTier

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig


@dataclass
class FedGEMSConfig(SelectionConfig, SGDStrategyConfig):
    """Selective distillation into a large server model.

    Attributes
    ----------
    name, rounds, fraction_fit
        See :class:`~fl_kd.kd.algorithm.StrategyConfig`.
    epsilon, temperature : float (default: 0.75, 1.0)
        ``eps * CE + (1 - eps) * KD`` weight and KD temperature, for server and clients alike.
    weighting : str (default: "inverse_entropy")
        Client fusion rule on the server (a name from :data:`fl_kd.kd.fedgems.fusion.FUSION_RULES`).
    server_epochs, server_batch_size, server_lr : (default: 4, 64, 0.05)
        Server distillation settings (E_srv, batch, SGD lr).
    client_distill_epochs : int (default: 1)
        Client distillation epochs on the transfer set (E_pub); local epochs, batch and lr come from the tier.
    momentum, weight_decay : float (default: 0.9, 5e-4)
        SGD settings of all parties.
    logits_dtype : str (default: "float32")
        Wire format of logits in both directions: "float32", "float16" (half the bytes), "uint8" (a quarter:
        log-probabilities quantised to 8 bits, which every softmax-based use of them reads alike) or "uint5" (5/32:
        32 levels about 0.32 nats apart down to -10, packed).
    checkpoint : str | None (default: None)
        Server checkpoint to start from (pretrained model or an earlier federation's ``server.pt``).
    correctness, held_out_fraction, held_out_server_labels, distill_correct, unlabelled_trust, reliability_power,
    reliability_on, teacher_min_confidence, learned_weight_decay, learned_prob_floor, learned_trim,
    unlabelled_per_round, unlabelled_cache, canaries, canary_z, canary_burst_z, consensus_z, consensus_margin,
    consensus_confidence, consensus_burst_z, consensus_raise, consensus_raise_margin
        What the server distils and whom it trusts: see
        :class:`~fl_kd.kd.fedgems.server_config.SelectionConfig`, which declares and checks them for the core
        server and this strategy alike.
    client_unlabelled : bool (default: False)
        Also broadcast the server's logits on the round's unlabelled subset, which clients distil (pure KD, after
        the labelled part): what the server learnt from every client reaches each client on inputs beyond the
        labelled part. Needs ``unlabelled_trust`` (the server then holds the unlabelled inputs).
    client_finetune_epochs : int (default: 0)
        After distilling the server's logits, a client trains this many epochs on its private data, to keep its
        accuracy on its own distribution.
    client_personal : bool (default: False)
        Fine-tune a personal copy of the client model instead of the model itself (needs
        ``client_finetune_epochs``): the client keeps a shared model, which answers the server and learns from it,
        and a personal one for its own distribution, as in Ditto (:class:`fl_kd.kd.fedgems.roles.FedGEMSClient`).
        Client accuracy on the personalised test set is then the personal model's, on the global one the shared
        model's.
    client_personal_prox : float | None (default: None)
        None: the personal model is the shared one fine-tuned afresh each round. A number ``lambda >= 0``: Ditto's
        personal model, kept across rounds and trained with ``lambda / 2 * ||v - w||^2`` towards the shared
        model (needs ``client_personal``).
    client_keep_distilled : bool (default: False)
        Each client keeps a copy of its model as it stands after distilling the server's knowledge, before
        fine-tuning (needs ``client_finetune_epochs``, not ``client_personal``), and is scored on the global test
        set with it; the fine-tuned model trains on, answers the server and serves the client's own test set, as
        without the copy, so the server is unchanged (:class:`fl_kd.kd.fedgems.roles.FedGEMSClient`).
    client_anchor : float (default: 0.0)
        Weight of the server's knowledge in each client's local training: every local step adds ``client_anchor
        * KD(server -> client)`` on a random batch of the transfer inputs whose server logits the client last
        distilled (learning without forgetting; :class:`fl_kd.kd.fedgems.roles.FedGEMSClient`). Training on its own
        label mix then keeps what the client learnt of the other classes, and its answers carry both. It costs a
        forward and backward pass of a transfer batch per local step. 0 (today): cross-entropy alone.
    client_personal_prior : bool (default: False)
        On its own test distribution a client predicts with the log of its private label frequencies added to the
        logits (of the personal model, or of the shared one without ``client_personal``): the shared model's
        knowledge under the client's own label prior, at no training cost.
    server_ema : float (default: 0.0)
        The server keeps an exponential moving average of its weights, updated after every training step with this
        decay (Polyak averaging, as a mean teacher does), and shows it: it is what the server broadcasts, queries
        with, is evaluated on and saves; training goes on from the trained weights. The average smooths the noise of
        each round's last steps on a small transfer set. The average spans about ``1 / (1 - decay)`` steps: keep
        that below a round's steps, or the shown model lags the trained one (a transfer-only server with 64 steps a
        round ended 0.74 at 0.998 against 0.80 without). 0 (today): the trained weights are shown.
    client_tail_average : float (default: 0.0)
        Each client answers the server and is evaluated (global and own test sets) with the equal average of its
        weights over the last share of each training phase's steps (local, distillation, fine-tuning; tail
        averaging, :meth:`fl_kd.kd.client.DistillClient.keep_weight_average`); training goes on from the trained
        weights. It smooths the noise of small batches at a fixed learning rate. 0 (today): the trained weights.
        With ``client_personal`` the personal model is the average of its fine-tuning's last steps.
    server_augment_shift : int (default: 0)
        The server trains on its images shifted by up to this many pixels each way (:mod:`fl_kd.data.augment`);
        image datasets only. 0 (today): no shift.
    server_augment_mirror : bool (default: False)
        The server trains on its images mirrored left-right with probability 1/2; image datasets only.
    """

    # The server phase's settings default to the core server's (declared once, in ServerDistillConfig).
    name: str = "fedgems"
    epsilon: float = ServerDistillConfig.epsilon
    temperature: float = ServerDistillConfig.temperature
    weighting: str = ServerDistillConfig.weighting
    server_epochs: int = ServerDistillConfig.epochs
    server_batch_size: int = ServerDistillConfig.batch_size
    server_lr: float = ServerDistillConfig.lr
    client_distill_epochs: int = ClientTrainConfig.distill_epochs
    logits_dtype: str = "float32"
    checkpoint: str | None = None
    client_unlabelled: bool = False
    client_finetune_epochs: int = 0
    client_personal: bool = False
    client_personal_prox: float | None = None
    client_keep_distilled: bool = False
    client_anchor: float = 0.0
    client_personal_prior: bool = False
    server_ema: float = ServerDistillConfig.ema_decay
    client_tail_average: float = 0.0
    server_augment_shift: int = ServerDistillConfig.augment_shift
    server_augment_mirror: bool = ServerDistillConfig.augment_mirror

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("strategy.epsilon", self.epsilon, low=0.0, high=1.0)
        check_range("strategy.temperature", self.temperature, low=0.0, low_open=True)
        check_choice("strategy.weighting", self.weighting, FUSION_RULES.names())
        check_range("strategy.server_epochs", self.server_epochs, low=0)
        check_range("strategy.server_batch_size", self.server_batch_size, low=1)
        check_range("strategy.server_lr", self.server_lr, low=0.0, low_open=True)
        check_range("strategy.client_distill_epochs", self.client_distill_epochs, low=0)
        check_choice("strategy.logits_dtype", self.logits_dtype, LOGITS_DTYPES)
        server = ("server_batch_size", "server_lr", "server_ema", "server_augment_shift", "server_augment_mirror")
        require_defaults_unless(self, server, self.server_epochs > 0, "is not read with strategy.server_epochs=0")
        self.checkpoint = absolute_path(self.checkpoint)
        self.check_selection("strategy.")
        check_range("strategy.client_finetune_epochs", self.client_finetune_epochs, low=0)
        require(
            not self.client_personal or self.client_finetune_epochs >= 1,
            "strategy.client_personal needs strategy.client_finetune_epochs >= 1",
        )
        if self.client_personal_prox is not None:
            check_range("strategy.client_personal_prox", self.client_personal_prox, low=0.0)
            require(self.client_personal, "strategy.client_personal_prox needs strategy.client_personal=true")
        require(
            not self.client_keep_distilled or (self.client_finetune_epochs >= 1 and not self.client_personal),
            "strategy.client_keep_distilled needs strategy.client_finetune_epochs >= 1 and "
            "strategy.client_personal=false (a personal model already leaves the shared one as distilled)",
        )
        check_range("strategy.client_anchor", self.client_anchor, low=0.0)
        check_range("strategy.server_ema", self.server_ema, low=0.0, high=1.0, high_open=True)
        check_range("strategy.client_tail_average", self.client_tail_average, low=0.0, high=1.0)
        check_range("strategy.server_augment_shift", self.server_augment_shift, low=0)

    def check_experiment(self, experiment: ExperimentConfig) -> None:
        """FedGEMS trusts a client on a sample when it is right there: it needs the labelled part."""
        require(
            experiment.transfer.labelled > 0,
            "strategy fedgems judges clients by labels: it needs transfer.labelled > 0",
        )
        require(
            self.unlabelled_trust == "none" or experiment.transfer.unlabelled > 0,
            f"strategy.unlabelled_trust={self.unlabelled_trust} needs an unlabelled part: set transfer.unlabelled > 0",
        )
        require(
            not self.client_unlabelled or self.unlabelled_trust != "none",
            "strategy.client_unlabelled needs strategy.unlabelled_trust=class_reliability or learned",
        )
        require(
            self.canaries < experiment.transfer.unlabelled or self.canaries == 0,
            f"strategy.canaries={self.canaries} must be smaller than transfer.unlabelled="
            f"{experiment.transfer.unlabelled} (they hide among the unlabelled samples)",
        )
        require(
            self.correctness == "train" or experiment.transfer.labelled >= 2,
            "strategy.correctness=held_out needs transfer.labelled >= 2",
        )
        require(
            experiment.transfer.unlabelled > 0 or self.unlabelled_per_round == 0,
            f"strategy.unlabelled_per_round={self.unlabelled_per_round} asks unlabelled samples: set "
            "transfer.unlabelled > 0",
        )

    def server_config(self) -> ServerDistillConfig:
        """Settings of the server's distillation phase."""
        return ServerDistillConfig(
            epochs=self.server_epochs,
            batch_size=self.server_batch_size,
            lr=self.server_lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epsilon=self.epsilon,
            temperature=self.temperature,
            weighting=self.weighting,
            ema_decay=self.server_ema,
            augment_shift=self.server_augment_shift,
            augment_mirror=self.server_augment_mirror,
            **self.selection_settings(),
        )

    def client_config(self, tier: DeviceTier) -> ClientTrainConfig:
        """Training settings of a client in device ``tier``."""
        return self.sgd_client_config(
            tier, distill_epochs=self.client_distill_epochs, epsilon=self.epsilon, temperature=self.temperature
        )
