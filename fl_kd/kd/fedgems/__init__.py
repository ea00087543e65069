"""FedGEMS-like selective knowledge distillation into a large server model.

Cheng et al., "FedGEMS: Federated Learning of Larger Server Models via Selective Knowledge Fusion",
arXiv:2110.11027. Clients of any architecture send logits on the transfer set; per sample the server learns from
the label where it is right (and caches its logits), from its cache where it was once right, and otherwise from
the correct clients fused by a fusion rule; clients distil the server's broadcast logits.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedgems.config import FedGEMSConfig
from fl_kd.kd.fedgems.parties import build_client_role, build_server, build_server_role, fedgems_config
from fl_kd.kd.fedgems.roles import FedGEMSClient, FedGEMSServer
from fl_kd.kd.fedgems.selection import SelectedTeacher, entropy, select_teacher
from fl_kd.kd.fedgems.server import SelectionStats, SelectiveDistillServer
from fl_kd.kd.fedgems.server_config import ServerDistillConfig

if "fedgems" not in STRATEGIES:
    STRATEGIES.add(
        "fedgems",
        Algorithm(
            name="fedgems",
            config_class=FedGEMSConfig,
            build_server=build_server_role,
            build_client=build_client_role,
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
    "FedGEMSClient",
    "FedGEMSServer",
    "build_client_role",
    "build_server_role",
    "select_teacher",
]
