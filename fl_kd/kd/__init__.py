"""Knowledge distillation across heterogeneous clients into a large server model.

Framework-free core, laid out so that a new algorithm is one folder: shared pieces here (config, federation
builder, losses, training, seeding, knowledge cache, fusion rules, metrics, runner helpers, message protocol) and
each algorithm beside them (:mod:`fl_kd.kd.fedgems`), registered in :mod:`fl_kd.kd.algorithm` with its config
class, its reference runner and the import references of its Flower apps.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm, StrategyConfig, available_strategies, get_algorithm
from fl_kd.kd.cache import KnowledgeCache
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, build_federation, sample_clients
from fl_kd.kd.fusion import FUSION_RULES
from fl_kd.kd.losses import distillation_loss, kd_loss
from fl_kd.kd.metrics import accuracy_summary, downlink_nbytes, round_metrics, uplink_nbytes
from fl_kd.kd.runner import RunResult, summarise
from fl_kd.kd.seeding import derive_seed

__all__ = [
    "FUSION_RULES",
    "STRATEGIES",
    "Algorithm",
    "ClientTrainConfig",
    "DistillClient",
    "ExperimentConfig",
    "Federation",
    "KnowledgeCache",
    "RunResult",
    "StrategyConfig",
    "accuracy_summary",
    "available_strategies",
    "build_client",
    "build_federation",
    "derive_seed",
    "distillation_loss",
    "downlink_nbytes",
    "get_algorithm",
    "kd_loss",
    "round_metrics",
    "sample_clients",
    "summarise",
    "uplink_nbytes",
]
