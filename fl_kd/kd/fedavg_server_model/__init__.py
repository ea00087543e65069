"""FedAvg of the large server model: the compute-unrealistic reference for weight sharing of the big model.

FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
arXiv:1602.05629) in which every client, whatever its device tier, trains the device profile's server model
(``device_profile.server_model``); the tier still decides local epochs, batch size, learning rate and device
speed. It is fl-kd's reference, not a method of its own: it tells how much accuracy sharing the big model's weights
would give, and at what upload and client compute cost (counted for the server model, see
:meth:`ServerModelFedAvgServer.client_model`), against distillation strategies whose clients keep small models.
Roles and averaging are FedAvg's (:mod:`fl_kd.kd.fedavg`).
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedavg_server_model.config import FedAvgServerModelConfig
from fl_kd.kd.fedavg_server_model.parties import build_client_role, build_server_role
from fl_kd.kd.fedavg_server_model.roles import ServerModelFedAvgServer

if "fedavg_server_model" not in STRATEGIES:
    STRATEGIES.add(
        "fedavg_server_model",
        Algorithm(
            name="fedavg_server_model",
            config_class=FedAvgServerModelConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = ["FedAvgServerModelConfig", "ServerModelFedAvgServer", "build_client_role", "build_server_role"]
