"""The knowledge-distillation message protocol: what the ServerApp and the ClientApps of a KD strategy exchange.

Both sides import these names (``strategies/`` and ``clients/`` never import each other). Every round is a train
exchange (local training, then the clients' logits on the transfer positions the server asks for) and an evaluate
exchange (the selected clients distil from the server's logits; every client reports its accuracy). A ``query``
message with ``action=hello`` lets the server learn each node's partition id once.

Run config (scalars only, as Flower requires):

* :data:`RUN_CONFIG_KEY`: the experiment as JSON (:meth:`fl_kd.kd.config.ExperimentConfig.to_json`);
* :data:`OUTPUT_DIR_KEY`: the run folder (metrics, summary, plots, ``server.pt``);
* :data:`RUN_ID_KEY`: the run's id, kept in its folder (:func:`fl_kd.kd.progress.folder_run_id`): it names the
  clients' saved states, so a resumed run finds them even after its folder moved.
"""

from __future__ import annotations

RUN_CONFIG_KEY = "fl-kd-config"
OUTPUT_DIR_KEY = "output-dir"
RUN_ID_KEY = "run-id"
CHECKPOINT_FILE = "server.pt"

# Records of a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# config record
ACTION = "action"
HELLO = "hello"
SERVER_ROUND = "server-round"
LOGITS_DTYPE = "logits-dtype"
DISTILL = "distill"
#: Whether a client reports its accuracies this round (``evaluation.fraction_clients``); absent means yes.
EVALUATE = "evaluate"
#: The round of the state the client must hold (the last round whose train message it answered; 0: its seeded
#: model). A client whose ``context.state`` is empty reloads exactly that round's saved state (fl_kd.kd.progress).
CLIENT_STATE_ROUND = "client-state-round"

# arrays record
POSITIONS = "positions"
LOGITS = "logits"
SERVER_LOGITS = "server-logits"
#: Public positions of the round's unlabelled samples and the server's logits there (FedGEMS ``client_unlabelled``).
UNLABELLED_POSITIONS = "unlabelled-positions"
UNLABELLED_LOGITS = "unlabelled-logits"
#: Labelled positions whose labels a client must not train on (FedGEMS ``reliability_on=held_out``).
LABEL_FREE_POSITIONS = "label-free-positions"
#: Labelled positions a client must leave out of all it learns from the server (FedGEMS ``held_out_server_labels``:
#: the server trains on their labels, so its logits there would carry them).
WITHHELD_POSITIONS = "withheld-positions"

# metrics record
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
DISTILL_LOSS = "distill-loss"
ACCURACY = "acc"
PERSONALISED_ACCURACY = "pacc"
#: Samples a client pushed through forward and backward passes in a phase (its compute cost).
TRAIN_SAMPLES = "train-samples"

#: ClientApp state key of the client model's weights (kept in ``context.state`` between rounds).
CLIENT_STATE = "client-model"
#: ClientApp state key of the round that state is of (a config record with :data:`SERVER_ROUND`).
CLIENT_STATE_OF = "client-model-round"
