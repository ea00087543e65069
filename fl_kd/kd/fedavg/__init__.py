"""FedAvg: clients of one architecture train the global model locally; the server averages their weights.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (arXiv:1602.05629). Each round the sampled clients receive the global weights,
train ``local_epochs`` on their private data (their device tier's epochs, batch and learning rate) and send their
weights back; the new global model is the average weighted by the clients' sample counts. Only one architecture is
possible, so a device profile whose tiers train different models is refused.

fl-kd reuses FedAvg's aggregation rule (:func:`fl_kd.kd.weights.weighted_average`), not Flower's ``FedAvg``
Strategy class: the generic KD strategy (``fl_kd.strategies.kd``) drives every algorithm, so FedAvg's metrics
(server and per-tier client accuracy), byte accounting and device cost are counted exactly as for the
distillation strategies it is compared with, and the in-process runner reproduces its Flower runs bit for bit.
The weight-sharing client and per-architecture averaging here are shared with ``fedavg_server_model`` and
``feddf``.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedavg.config import FedAvgConfig, WeightSharingConfig, client_architectures
from fl_kd.kd.fedavg.parties import (
    build_client_role,
    build_server_role,
    fedavg_server,
    global_model,
    max_examples,
    weight_sharing_client,
    weight_sharing_config,
)
from fl_kd.kd.fedavg.roles import (
    NUM_EXAMPLES,
    FedAvgServer,
    WeightSharingClient,
    WeightSharingServer,
    check_num_examples,
    split_answer,
)

if "fedavg" not in STRATEGIES:
    STRATEGIES.add(
        "fedavg",
        Algorithm(
            name="fedavg",
            config_class=FedAvgConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = [
    "NUM_EXAMPLES",
    "FedAvgConfig",
    "FedAvgServer",
    "WeightSharingClient",
    "WeightSharingConfig",
    "WeightSharingServer",
    "build_client_role",
    "build_server_role",
    "check_num_examples",
    "client_architectures",
    "fedavg_server",
    "global_model",
    "max_examples",
    "split_answer",
    "weight_sharing_client",
    "weight_sharing_config",
]
