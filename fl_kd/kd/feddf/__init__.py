"""FedDF: per-architecture FedAvg fused by ensemble distillation on unlabelled data.

Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated Learning", NeurIPS 2020
(arXiv:2006.07242). Clients of any architecture send their weights; the server averages them per architecture
(sample-count weighted, FedAvg's rule) into one prototype per architecture, then distils the ensemble of the
received client models (the mean of their logits, "AvgLogits"; ``strategy.ensemble=prototypes`` takes the
architecture averages instead) into every prototype on the transfer set's inputs, whose labels are never read
(KL divergence at ``temperature``, Adam). Each sampled client then receives its architecture's distilled weights.

fl-kd also distils the same ensemble into the large server model (``device_profile.server_model``), whose
accuracy the server reports: the paper's server holds only the prototypes. Departures from the paper: a fixed
number of distillation epochs (``distill_epochs``, ``server_epochs``) instead of early stopping on a validation
split, and the distillation data is the transfer set (``transfer.labelled`` and ``transfer.unlabelled``, inputs
only) rather than a separate unlabelled data set. The client half and the averaging are FedAvg's
(:mod:`fl_kd.kd.fedavg`).
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedavg import build_client_role
from fl_kd.kd.feddf.config import ENSEMBLES, FedDFConfig
from fl_kd.kd.feddf.distill import distill_into, ensemble_logits
from fl_kd.kd.feddf.parties import build_server_role
from fl_kd.kd.feddf.roles import SERVER_MODEL_PHASE, FedDFServer

if "feddf" not in STRATEGIES:
    STRATEGIES.add(
        "feddf",
        Algorithm(
            name="feddf",
            config_class=FedDFConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = [
    "ENSEMBLES",
    "SERVER_MODEL_PHASE",
    "FedDFConfig",
    "FedDFServer",
    "build_client_role",
    "build_server_role",
    "distill_into",
    "ensemble_logits",
]
