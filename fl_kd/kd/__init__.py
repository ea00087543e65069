"""Selective knowledge distillation into a large server model (FedGEMS, Cheng et al., 2021, arXiv:2110.11027).

Framework-free core: losses, teacher selection, the knowledge cache, the server and client roles, and a
reference runner that drives them in-process. Flower strategies and client apps wrap the same classes.
"""

from fl_kd.kd.cache import KnowledgeCache
from fl_kd.kd.client import ClientTrainConfig, DistillClient
from fl_kd.kd.config import ReferenceConfig
from fl_kd.kd.federation import Federation, build_client, build_federation, build_server, sample_clients
from fl_kd.kd.losses import distillation_loss, kd_loss
from fl_kd.kd.metrics import accuracy_summary, downlink_nbytes, round_metrics, uplink_nbytes
from fl_kd.kd.runner import RunResult, run_reference, run_round, summarise
from fl_kd.kd.seeding import derive_seed
from fl_kd.kd.selection import SelectedTeacher, entropy, select_teacher
from fl_kd.kd.server import SelectionStats, SelectiveDistillServer, ServerDistillConfig

__all__ = [
    "ClientTrainConfig",
    "DistillClient",
    "Federation",
    "KnowledgeCache",
    "ReferenceConfig",
    "RunResult",
    "SelectedTeacher",
    "SelectionStats",
    "SelectiveDistillServer",
    "ServerDistillConfig",
    "accuracy_summary",
    "build_client",
    "build_federation",
    "build_server",
    "derive_seed",
    "distillation_loss",
    "downlink_nbytes",
    "entropy",
    "kd_loss",
    "round_metrics",
    "run_reference",
    "run_round",
    "sample_clients",
    "select_teacher",
    "summarise",
    "uplink_nbytes",
]
