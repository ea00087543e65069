"""FedMD: heterogeneous federated learning via model distillation.

Li & Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS 2019 Workshop on Federated
Learning for Data Privacy and Confidentiality, arXiv:1910.03581. Clients of any architecture score the public
(transfer) set; the server averages the scores into a consensus; each client digests the consensus (trains to match
it on the public samples) and revisits its private data. Here the scores are logits on all public positions (the
labelled and unlabelled parts alike, or a seeded sample of ``public_per_round`` of them), digesting is pure KD
(``DistillClient.distill_on``) rather than the authors' mean absolute error on logits, and the start-up transfer
learning is shortened to a few epochs of cross-entropy on the labelled public part (``pretrain_public``, on wherever
that part exists) followed by the tier's local epochs on private data.

The server model is fl-kd's addition for comparison, not part of the paper: the device profile's large server
model, distilled each round from the consensus on the same positions (``server_epochs``, ``server_lr``).

:mod:`fl_kd.kd.fedmd.public_logits` holds what FedMD and DS-FL (:mod:`fl_kd.kd.dsfl`) share.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedmd.config import FedMDConfig
from fl_kd.kd.fedmd.parties import build_client_role, build_server_role
from fl_kd.kd.fedmd.roles import FedMDClient, FedMDServer, consensus

if "fedmd" not in STRATEGIES:
    STRATEGIES.add(
        "fedmd",
        Algorithm(
            name="fedmd",
            config_class=FedMDConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = ["FedMDClient", "FedMDConfig", "FedMDServer", "build_client_role", "build_server_role", "consensus"]
