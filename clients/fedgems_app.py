"""ClientApp of selective knowledge distillation: local training, logits query, and distillation from the server.

The client's model comes from its device tier; its weights live in ``context.state`` between rounds, since the
ClientApp object itself does not persist. Message handlers:

* ``query`` (``action=hello``): say which partition this node holds, so the server can sample by partition id;
* ``train``: train on private data, then answer the server's query with logits on the asked transfer positions;
* ``evaluate``: distil from the server's logits (when selected), then report test accuracy.
"""

from __future__ import annotations

import functools
from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp

from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ReferenceConfig
from fl_kd.kd.federation import Federation, build_client, build_federation

CONFIG_KEY = "fl-kd-config"
STATE_KEY = "client-model"

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _federation(config_json: str) -> tuple[ReferenceConfig, Federation]:
    # Simulation actors are reused across clients and rounds: load and split the data once per process.
    cfg = ReferenceConfig.from_json(config_json)
    return cfg, build_federation(cfg)


def _client(context: Context) -> tuple[ReferenceConfig, Federation, DistillClient]:
    """This node's client, with the weights it left in ``context.state`` last time."""
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, federation = _federation(str(context.run_config[CONFIG_KEY]))
    client = build_client(cfg, federation, _partition_id(context))
    if STATE_KEY in context.state:
        client.load_state_dict({"model": context.state.array_records[STATE_KEY].to_torch_state_dict()})
    return cfg, federation, client


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _save(context: Context, client: DistillClient) -> None:
    context.state[STATE_KEY] = ArrayRecord(client.state_dict()["model"])


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Identify this node's partition (and its private set size)."""
    _, federation, _ = _client(context)
    partition_id = _partition_id(context)
    metrics = MetricRecord(
        {"partition-id": partition_id, "num-examples": int(federation.client_idx[partition_id].size)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on private data, then logits on the transfer positions the server asked for."""
    _, _, client = _client(context)
    config = msg.content.config_records["config"]
    server_round = int(cast(int, config["server-round"]))
    dtype = str(config["logits-dtype"])
    result = client.local_train(server_round)
    positions = msg.content.array_records["arrays"]["positions"].numpy().astype(np.int64)
    logits = client.logits(positions, dtype)
    _save(context, client)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"positions": Array(positions), "logits": Array(logits)}),
            "metrics": MetricRecord(
                {
                    "partition-id": _partition_id(context),
                    "train-loss": float(result["loss"]),
                    "num-examples": int(result["num_examples"]),
                }
            ),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Distil from the server's transfer-set logits (if selected this round), then test on global and own data."""
    _, federation, client = _client(context)
    config = msg.content.config_records["config"]
    metrics: dict[str, MetricRecordValues] = {"partition-id": _partition_id(context)}
    if bool(config["distill"]):
        server_logits = msg.content.array_records["arrays"]["server-logits"].numpy()
        result = client.distill(int(cast(int, config["server-round"])), server_logits)
        metrics["distill-loss"] = float(result["loss"])
        _save(context, client)
    data = federation.data
    metrics["acc"] = client.evaluate(data.x_test, data.y_test)
    metrics["pacc"] = client.evaluate(*federation.personalised_test(_partition_id(context)))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
