"""FedGEMS-like selective knowledge distillation into a large server model.

Cheng et al., "FedGEMS: Federated Learning of Larger Server Models via Selective Knowledge Fusion",
arXiv:2110.11027. Clients of any architecture send logits on the transfer set; per sample the server learns from
the label where it is right (and caches its logits), from its cache where it was once right, and otherwise from
the correct clients fused by a fusion rule; clients distil the server's broadcast logits.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedgems.config import FedGEMSConfig
from fl_kd.kd.fedgems.runner import build_server, fedgems_config, preflight, run_reference, run_round
from fl_kd.kd.fedgems.selection import SelectedTeacher, entropy, select_teacher
from fl_kd.kd.fedgems.server import SelectionStats, SelectiveDistillServer, ServerDistillConfig

if "fedgems" not in STRATEGIES:
    STRATEGIES.add(
        "fedgems",
        Algorithm(
            name="fedgems",
            config_class=FedGEMSConfig,
            server_app="fl_kd.strategies.fedgems_app:app",
            client_app="fl_kd.clients.fedgems_app:app",
            run_inprocess=run_reference,
            preflight=preflight,
        ),
    )

__all__ = [
    "FedGEMSConfig",
    "SelectedTeacher",
    "SelectionStats",
    "SelectiveDistillServer",
    "ServerDistillConfig",
    "build_server",
    "entropy",
    "fedgems_config",
    "run_reference",
    "run_round",
    "select_teacher",
]
