"""The ClientApp of every KD algorithm: it carries the registered client half's instructions and answers.

The client's model comes from its device tier; everything it keeps between rounds lives in ``context.state``,
since the ClientApp object itself does not persist. Message names are those of :mod:`fl_kd.kd.protocol`. Handlers:

* ``query`` (``action=hello``): say which partition this node holds, so the server can sample by partition id;
* ``train``: train on private data as instructed and answer (logits or weights, as the algorithm says);
* ``evaluate``: take in the server's knowledge (when sampled this round), then report test accuracy.

Every incoming array is decoded only after its declared dtype and shape agree with its bytes; scalars are
type-checked; a malformed message raises a clear error, which Flower returns to the server as an error reply.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp

from fl_kd.data.node_local import NodeSpec, node_spec
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.kd.node_federation import node_federation
from fl_kd.kd.roles import ClientRole, Instruction
from fl_kd.kd.validation import check_bounded
from fl_kd.protocol import decode_array, record, scalar_of

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _federation(config_json: str, node: NodeSpec | None = None) -> tuple[ExperimentConfig, Federation]:
    # Simulation actors are reused across clients and rounds: load and split the data once per process. A deployed
    # node (its node config names its data) holds only its own data and the transfer set.
    cfg = ExperimentConfig.from_json(config_json)
    return cfg, build_federation(cfg) if node is None else node_federation(cfg, node)


def _node(context: Context) -> NodeSpec:
    """Who this node is and what it holds, from its node config (see :mod:`fl_kd.data.node_local`)."""
    return node_spec(context.node_config)


def _context_federation(context: Context) -> tuple[ExperimentConfig, Federation]:
    node = _node(context)
    return _federation(str(context.run_config[kd.RUN_CONFIG_KEY]), node if node.node_local else None)


def _config(context: Context) -> ExperimentConfig:
    return _context_federation(context)[0]


def _client(context: Context) -> tuple[Federation, ClientRole]:
    """This node's client half, with the state it left in ``context.state`` last time."""
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, federation = _context_federation(context)
    client = get_algorithm(cfg.strategy.name).build_client(cfg, federation, _partition_id(context))
    if kd.CLIENT_STATE in context.state:
        client.load_state_dict(context.state.array_records[kd.CLIENT_STATE].to_torch_state_dict())
    return federation, client


def _partition_id(context: Context) -> int:
    return _node(context).client_id


def _save(context: Context, client: ClientRole) -> None:
    context.state[kd.CLIENT_STATE] = ArrayRecord(client.state_dict())


def _instruction(msg: Message, context: Context) -> tuple[int, Instruction]:
    """The server round and the instruction a message carries, checked before use.

    Raises ``ValueError`` saying why on a missing or non-integer round, an array that does not decode, positions
    that are not a 1-D integer array (floats are not cast), or a float array with NaN, inf or a value beyond
    ``max_abs_value``; Flower returns it to the server as an error reply.
    """
    server_round = scalar_of(msg.content, kd.CONFIG, kd.SERVER_ROUND)
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
        raise ValueError(f"message has no positive int {kd.SERVER_ROUND}, got {server_round!r}")
    arrays = {name: decode_array(array) for name, array in record(msg.content, kd.ARRAYS).items()}
    positions = arrays.get(kd.POSITIONS)
    if positions is not None and (positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer)):
        raise ValueError(f"{kd.POSITIONS} must be a 1-D integer array, got {positions.dtype} {positions.shape}")
    if positions is not None and positions.size and int(positions.min()) < 0:
        raise ValueError(f"{kd.POSITIONS} must not be negative")
    reason = check_bounded(arrays, _config(context).max_abs_value)
    if reason is not None:
        raise ValueError(f"instruction refused: {reason}")
    scalars = record(msg.content, kd.CONFIG).items()
    config = {key: value for key, value in scalars if isinstance(value, (bool, int, float, str))}
    return server_round, Instruction(arrays, config)


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
    """Train as instructed and answer the server."""
    _, client = _client(context)
    server_round, instruction = _instruction(msg, context)
    answer = client.train(server_round, instruction)
    _save(context, client)
    metrics: dict[str, MetricRecordValues] = {kd.PARTITION_ID: _partition_id(context), **answer.metrics}
    content = RecordDict(
        {
            kd.ARRAYS: ArrayRecord({name: Array(value) for name, value in answer.arrays.items()}),
            kd.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Take in the server's knowledge (if sampled this round), then test on the global and the own test set."""
    federation, client = _client(context)
    server_round, instruction = _instruction(msg, context)
    distill = instruction.config.get(kd.DISTILL)
    if not isinstance(distill, bool):
        raise ValueError(f"{kd.DISTILL} must be a bool, got {distill!r}")
    report = instruction.config.get(kd.EVALUATE, True)
    if not isinstance(report, bool):
        raise ValueError(f"{kd.EVALUATE} must be a bool, got {report!r}")
    metrics: dict[str, MetricRecordValues] = {kd.PARTITION_ID: _partition_id(context)}
    if distill:
        metrics |= client.receive(server_round, instruction)
        _save(context, client)
    if not report:
        return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=msg)
    metrics[kd.ACCURACY] = client.evaluate(*federation.test_set(_config(context), server_round))
    metrics[kd.PERSONALISED_ACCURACY] = client.evaluate(*federation.personalised_test(_partition_id(context)))
    return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=msg)
