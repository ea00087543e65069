"""Fed-ET: heterogeneous ensemble knowledge transfer for training a large server model in federated learning.

Cho, Manoel, Joshi, Sim and Dimitriadis, "Heterogeneous Ensemble Knowledge Transfer for Training Large Models in
Federated Learning", IJCAI 2022, arXiv:2204.12703.

The server keeps one small model per client architecture (the device tiers' models) and a large server model. Each
round the sampled clients train their architecture's small model on private data and return its weights and sample
count; the server averages them per architecture (FedAvg weights), forms the ensemble of the returned client models
on the unlabelled public inputs (``Federation.public_x``; no label is read), trains the server model on the
confidence-weighted consensus with a diversity regularisation towards the clients outside the consensus
(:mod:`fl_kd.kd.fedet.ensemble`), and transfers the server's knowledge back into each small model, which the sampled
clients load. The server accuracy reported is the large model's.

What was checked and what is inferred:

* From the paper's abstract and introduction (read): small heterogeneous client models, a larger server model,
  unlabelled public data, weighted consensus distillation that favours confident clients, and a diversity
  regularisation that still uses the clients outside the consensus.
* From a public third-party reimplementation (read, not copied), consistent with the paper's description but not
  checked against its equations: confidence is the variance of a client's output over the classes, the consensus
  weights are these variances normalised over the clients per sample, the server model learns the consensus'
  argmax with cross-entropy, and the diversity term is a KL towards the variance-weighted average of the clients
  whose argmax differs from the consensus, weighted by a small lambda (0.05 there, our default).
* Inferred / fl-kd's choices: population variance (the normalised weights do not depend on the choice); equal
  weights where all variances are zero; the diversity term is left out on samples where every client agrees; the
  server model keeps training across rounds; ``consensus_loss="soft"`` (KD towards the consensus logits) is an
  ablation, not the paper's.
* Deviation: the paper transfers the server's representation (its final layer, shared in dimension with the small
  models) back to the small models. fl-kd's tier models and server model differ in their feature sizes, so the
  knowledge moves back by distillation instead: ``transfer_epochs`` of KD from the server model's logits on the
  public inputs into each architecture's averaged small model.
"""

from fl_kd.kd.algorithm import STRATEGIES, Algorithm
from fl_kd.kd.fedet.config import CONSENSUS_LOSSES, FedETConfig
from fl_kd.kd.fedet.ensemble import EnsembleTargets, confidence, ensemble_targets
from fl_kd.kd.fedet.parties import build_client_role, build_server, build_server_role, fedet_config
from fl_kd.kd.fedet.roles import FedETServer
from fl_kd.kd.fedet.server import ClientModel, EnsembleTransferServer

if "fedet" not in STRATEGIES:
    STRATEGIES.add(
        "fedet",
        Algorithm(
            name="fedet",
            config_class=FedETConfig,
            build_server=build_server_role,
            build_client=build_client_role,
        ),
    )

__all__ = [
    "CONSENSUS_LOSSES",
    "ClientModel",
    "EnsembleTargets",
    "EnsembleTransferServer",
    "FedETConfig",
    "FedETServer",
    "build_client_role",
    "build_server",
    "build_server_role",
    "confidence",
    "ensemble_targets",
    "fedet_config",
]
