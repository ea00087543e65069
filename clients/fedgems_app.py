"""ClientApp of selective knowledge distillation: local training, logits query, and distillation from the server.

The client's model comes from its device tier; its weights live in ``context.state`` between rounds, since the
ClientApp object itself does not persist. Message names are those of :mod:`fl_kd.kd.protocol`. Handlers:

* ``query`` (``action=hello``): say which partition this node holds, so the server can sample by partition id;
* ``train``: train on private data, then answer the server's query with logits on the asked transfer positions;
* ``evaluate``: distil from the server's logits (when selected), then report test accuracy.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp

from fl_kd.kd import protocol as kd
from fl_kd.kd.client import DistillClient
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_client, build_federation
from fl_kd.protocol import array_of, int_of, scalar_of

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _federation(config_json: str) -> tuple[ExperimentConfig, Federation]:
    # Simulation actors are reused across clients and rounds: load and split the data once per process.
    cfg = ExperimentConfig.from_json(config_json)
    return cfg, build_federation(cfg)


def _client(context: Context) -> tuple[Federation, DistillClient]:
    """This node's client, with the weights it left in ``context.state`` last time."""
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, federation = _federation(str(context.run_config[kd.RUN_CONFIG_KEY]))
    client = build_client(cfg, federation, _partition_id(context))
    if kd.CLIENT_STATE in context.state:
        client.load_state_dict({"model": context.state.array_records[kd.CLIENT_STATE].to_torch_state_dict()})
    return federation, client


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _save(context: Context, client: DistillClient) -> None:
    context.state[kd.CLIENT_STATE] = ArrayRecord(client.state_dict()["model"])


def _server_round(msg: Message) -> int:
    server_round = int_of(msg.content, kd.CONFIG, kd.SERVER_ROUND)
    if server_round is None:
        raise ValueError(f"message has no integer {kd.SERVER_ROUND}")
    return server_round


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Identify this node's partition (and its private set size)."""
    federation, _ = _client(context)
    partition_id = _partition_id(context)
    metrics = MetricRecord(
        {kd.PARTITION_ID: partition_id, kd.NUM_EXAMPLES: int(federation.client_idx[partition_id].size)}
    )
    return Message(RecordDict({kd.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on private data, then logits on the transfer positions the server asked for."""
    _, client = _client(context)
    server_round = _server_round(msg)
    dtype = str(scalar_of(msg.content, kd.CONFIG, kd.LOGITS_DTYPE))
    positions = array_of(msg.content, kd.ARRAYS, kd.POSITIONS)
    if positions is None or positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError("the server's query has no 1-D integer positions")
    result = client.local_train(server_round)
    positions = positions.astype(np.int64)
    logits = client.logits(positions, dtype)
    _save(context, client)
    content = RecordDict(
        {
            kd.ARRAYS: ArrayRecord({kd.POSITIONS: Array(positions), kd.LOGITS: Array(logits)}),
            kd.METRICS: MetricRecord(
                {
                    kd.PARTITION_ID: _partition_id(context),
                    kd.TRAIN_LOSS: float(result["loss"]),
                    kd.NUM_EXAMPLES: int(result["num_examples"]),
                }
            ),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Distil from the server's transfer-set logits (if selected this round), then test on global and own data."""
    federation, client = _client(context)
    metrics: dict[str, MetricRecordValues] = {kd.PARTITION_ID: _partition_id(context)}
    distill = scalar_of(msg.content, kd.CONFIG, kd.DISTILL)
    if not isinstance(distill, bool):
        raise ValueError(f"{kd.DISTILL} must be a bool, got {distill!r}")
    if distill:
        server_logits = array_of(msg.content, kd.ARRAYS, kd.SERVER_LOGITS)
        if server_logits is None:
            raise ValueError(f"asked to distil but the message has no {kd.SERVER_LOGITS}")
        result = client.distill(_server_round(msg), server_logits)
        metrics[kd.DISTILL_LOSS] = float(result["loss"])
        _save(context, client)
    data = federation.data
    metrics[kd.ACCURACY] = client.evaluate(data.x_test, data.y_test)
    metrics[kd.PERSONALISED_ACCURACY] = client.evaluate(*federation.personalised_test(_partition_id(context)))
    return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=msg)
