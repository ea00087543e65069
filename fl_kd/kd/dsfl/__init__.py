"""DS-FL: distillation-based semi-supervised federated learning.

Itahara, Nishio, Koda, Morikura & Yamamoto, "Distillation-Based Semi-Supervised Federated Learning for
Communication-Efficient Collaborative Training With Non-IID Private Data", IEEE Transactions on Mobile Computing
(2021), arXiv:2008.06180. Each round the clients train on private data and share their outputs on an unlabelled open
dataset; the server aggregates them by entropy reduction aggregation (ERA: the average of the clients' softmax
outputs, sharpened by a temperature T < 1) and the clients distil the aggregated soft labels. The paper sharpens by a
softmax of the average at T (``strategy.era=softmax``); fl-kd's default sharpens by a power of it (``era=power``),
a departure :class:`DSFLConfig` states with the figures that chose it. Here the open dataset
is the whole transfer set (the labelled part's inputs count as unlabelled: no label is ever read); clients send
logits, whose softmax the server averages.

The server model is fl-kd's addition for comparison, not part of the paper: the device profile's large server
model, distilled each round from the aggregated soft labels (``server_epochs``, ``server_lr``). The parts shared
with FedMD live in :mod:`fl_kd.kd.fedmd.public_logits`.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.dsfl.config import DSFLConfig
from fl_kd.kd.dsfl.parties import build_client_role, build_server_role
from fl_kd.kd.dsfl.roles import DSFLClient, DSFLServer, entropy_reduction, mean_entropy

if "dsfl" not in STRATEGIES:
    STRATEGIES.add(
        "dsfl",
        Algorithm(
            name="dsfl",
            config_class=DSFLConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = [
    "DSFLClient",
    "DSFLConfig",
    "DSFLServer",
    "build_client_role",
    "build_server_role",
    "entropy_reduction",
    "mean_entropy",
]
