"""Vertical (split) federated learning: parties, the training loop, label defences and the hooks attacks use.

The core is framework-free; every protocol message is a method on a party that takes plain tensors
(``FeatureParty.embed``, ``LabelParty.train_step``, ``FeatureParty.apply_gradient``), so a Flower app can send
them over messages while ``train_vfl`` runs the same steps in-process.
"""

from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.experiment import VFLExperiment, build_experiment, run_vfl
from fl_kd.vfl.hooks import FeaturePartyAttack, LabelDefence
from fl_kd.vfl.models import BottomMLP, MLPTop, SumTop, build_top_model
from fl_kd.vfl.parties import FeatureParty, LabelParty, soft_cross_entropy
from fl_kd.vfl.split import VerticalSplit, align_samples, make_split, split_features
from fl_kd.vfl.trainer import TrainingHistory, batch_order, evaluate_vfl, predict_vfl, train_vfl

__all__ = [
    "BottomMLP",
    "FeatureParty",
    "FeaturePartyAttack",
    "LabelDefence",
    "LabelParty",
    "MLPTop",
    "SumTop",
    "TrainingHistory",
    "VFLExperiment",
    "VFLRunConfig",
    "VerticalSplit",
    "align_samples",
    "batch_order",
    "build_experiment",
    "build_top_model",
    "evaluate_vfl",
    "make_split",
    "predict_vfl",
    "run_vfl",
    "soft_cross_entropy",
    "split_features",
    "train_vfl",
]
