"""The ClientApp of every KD algorithm: it carries the registered client half's instructions and answers.

The client's model comes from its device tier; everything it keeps between rounds lives in ``context.state``,
since the ClientApp object itself does not persist. Flower keeps ``context.state`` per run and per SuperNode process,
so the client also saves it on its node after every message that changed it, and reloads it when the state is gone
(a resumed run, a restarted SuperNode) and the server says which round's state it must hold
(:mod:`fl_kd.kd.progress`: exactly that round's file is used, anything else is refused and logged). Message names
are those of :mod:`fl_kd.kd.protocol`. Handlers:

* ``query`` (``action=hello``): say which partition this node holds, so the server can sample by partition id;
* ``train``: train on private data as instructed and answer (logits or weights, as the algorithm says);
* ``evaluate``: take in the server's knowledge (when sampled this round), then report test accuracy.

Every incoming array is decoded only after its name is one the client takes in that phase and its declared dtype
and shape agree with its bytes; scalars are type-checked; a malformed message raises a clear error, which Flower
returns to the server as an error reply.
"""

from __future__ import annotations

import functools
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fl_kd.data.node_local import NodeSpec, node_spec
from fl_kd.kd import protocol as kd
from fl_kd.kd.algorithm import get_algorithm
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.kd.node_federation import node_federation
from fl_kd.kd.progress import (
    CLIENT_STATE_DIR_KEY,
    ClientStateError,
    client_state_folder,
    load_client_state,
    run_key,
    save_client_state,
    state_root,
)
from fl_kd.kd.roles import ClientRole, Instruction, Phase
from fl_kd.kd.validation import check_bounded
from fl_kd.protocol import decode_record, party_text, record, scalar_of

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
    cfg, federation = _federation(str(context.run_config[kd.RUN_CONFIG_KEY]), node if node.node_local else None)
    node.check_federation(cfg.num_clients)  # a node naming no data, too: its partition must fit the experiment
    return cfg, federation


def _config(context: Context) -> ExperimentConfig:
    return _context_federation(context)[0]


def _client(context: Context, state_round: int | None = None) -> tuple[Federation, ClientRole]:
    """This node's client half, with the state it left in ``context.state`` last time.

    ``state_round`` is the server's word that this client's state is of that round (None: it does not say). Where
    ``context.state`` holds a state of another round (the server refused or never received the later answers, or
    resumed from an earlier round), or none, the state saved on this node for exactly that round is reloaded, so the
    client goes on from what the server knows of it; round 0 is the client's seeded self.
    """
    torch.set_num_threads(1)  # several ClientApps share the machine's cores in simulation
    cfg, federation = _context_federation(context)
    client = get_algorithm(cfg.strategy.name).build_client(cfg, federation, _partition_id(context))
    held = _held_round(context)
    if kd.CLIENT_STATE in context.state and (state_round is None or held in (None, state_round)):
        client.load_state_dict(context.state.array_records[kd.CLIENT_STATE].to_torch_state_dict())
    elif state_round:
        if held is not None:
            log(INFO, "Client %d holds its state of round %d; the server goes on from round %d",
                client.client_id, held, state_round)  # fmt: skip
        _reload(context, client, state_round)
    return federation, client


def _held_round(context: Context) -> int | None:
    """The round of the state in ``context.state`` (None where a state carries no round: an older ClientApp's)."""
    if kd.CLIENT_STATE_OF not in context.state:
        return None
    value = context.state.config_records[kd.CLIENT_STATE_OF].get(kd.SERVER_ROUND)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _partition_id(context: Context) -> int:
    return _node(context).client_id


def _state_folder(context: Context) -> Path | None:
    """Where this client's saved states go (see :func:`fl_kd.kd.progress.state_root`); None when nowhere."""
    node = _node(context)
    run_config = context.run_config
    output_dir = str(run_config.get(kd.OUTPUT_DIR_KEY, "")) or None
    root = state_root(str(run_config.get(CLIENT_STATE_DIR_KEY, "")), node.state_dir, node.data_dir, output_dir)
    if root is None:
        return None
    return client_state_folder(root, _run_key(context), node.client_id)


def _run_key(context: Context) -> str:
    run_config = context.run_config
    # A launcher of before the run id sends none; its clients' states are named by the run folder.
    run_id = str(run_config.get(kd.RUN_ID_KEY, "")) or str(run_config.get(kd.OUTPUT_DIR_KEY, ""))
    return run_key(str(run_config[kd.RUN_CONFIG_KEY]), run_id)


def _reload(context: Context, client: ClientRole, state_round: int) -> None:
    """Load the state this client saved for ``state_round``, checked against its model; refused (logged) otherwise.

    A saved state holds every entry of a fresh client's, with the same shapes and dtypes, and may hold more: what a
    client keeps only once it has distilled (a kept copy of its model, the server's knowledge), which the client's
    own ``load_state_dict`` checks.
    """
    folder = _state_folder(context)
    try:
        if folder is None:
            raise ClientStateError("no folder for client states is known (set client-state-dir or output-dir)")
        state = load_client_state(folder, state_round, client.client_id, _run_key(context))
        expected = client.state_dict()
        if not set(expected) <= set(state) or any(
            state[name].shape != value.shape or state[name].dtype != value.dtype for name, value in expected.items()
        ):
            raise ClientStateError(f"{folder}: round {state_round}'s state does not fit this client's model")
        try:
            client.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ClientStateError(f"{folder}: round {state_round}'s state does not fit this client: {err}") from None
    except ClientStateError as err:
        log(WARNING, "Client %d refuses to go on: its state is gone and the saved one cannot be used: %s",
            client.client_id, err)  # fmt: skip
        raise ValueError(f"client {client.client_id} lost its state of round {state_round}: {err}") from None
    log(INFO, "Client %d reloaded its state of round %d from %s", client.client_id, state_round, folder)


def _save(
    context: Context, client: ClientRole, server_round: int, named_round: int | None, distilled: bool = False
) -> None:
    """Keep the client's state in ``context.state``, and on the node for a resumed run (a failed write is logged).

    The file of ``named_round``, the round the server named as this client's state, is kept whatever else goes: the
    server may never receive this message's answer and name that round again, after the node restarted.
    """
    state = client.state_dict()
    context.state[kd.CLIENT_STATE] = ArrayRecord(state)
    context.state[kd.CLIENT_STATE_OF] = ConfigRecord({kd.SERVER_ROUND: server_round, kd.DISTILL: distilled})
    folder = _state_folder(context)
    if folder is None:
        return
    try:
        save_client_state(folder, server_round, client.client_id, _run_key(context), state, keep=named_round)
    except (OSError, RuntimeError) as err:  # torch.save reports a file it cannot open as a RuntimeError
        log(WARNING, "Client %d could not save its state in %s (%s); a resumed run cannot reload it",
            client.client_id, folder, err)  # fmt: skip


def _state_round(msg: Message, server_round: int, training: bool) -> int | None:
    """The round of the state the server says this client holds (None when it does not say).

    Before a round's training it is of an earlier round; before its evaluation it may be of this one.
    """
    value = scalar_of(msg.content, kd.CONFIG, kd.CLIENT_STATE_ROUND)
    if value is None:
        return None
    last = server_round - 1 if training else server_round
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= last:
        raise ValueError(f"{kd.CLIENT_STATE_ROUND} must be an int in [0, {last}], got {party_text(value, 40)}")
    return value


def _server_round(msg: Message, context: Context) -> int:
    """The message's server round: a positive int, not past the run's rounds (``ValueError`` saying why)."""
    server_round = scalar_of(msg.content, kd.CONFIG, kd.SERVER_ROUND)
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
        raise ValueError(f"message has no positive int {kd.SERVER_ROUND}, got {party_text(server_round, 40)}")
    rounds = _config(context).strategy.rounds
    if server_round > rounds:  # a round past the run's once named a state file too long to write
        raise ValueError(f"{kd.SERVER_ROUND}={party_text(server_round, 40)} is past the run's {rounds} rounds")
    return server_round


def _instruction(msg: Message, context: Context, client: ClientRole, phase: Phase) -> Instruction:
    """The instruction a ``phase`` message carries for ``client``, checked before use.

    Raises ``ValueError`` saying why on a config value that is not a bool, number or string (dropped, a setting
    would take its default), a record of arrays the client does not take in this phase
    (:meth:`~fl_kd.kd.roles.ClientRole.instruction_names`) or of more arrays or bytes than the protocol allows
    (:func:`fl_kd.protocol.decode_record`, both checked before any array decodes), an array that does not decode,
    positions that are not a 1-D integer array (floats are not cast), or a float array with NaN, inf or a value
    beyond ``max_abs_value``; Flower returns it to the server as an error reply.
    """
    arrays = decode_record(msg.content, kd.ARRAYS, client.instruction_names(phase))
    positions = arrays.get(kd.POSITIONS)
    if positions is not None and (positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer)):
        raise ValueError(f"{kd.POSITIONS} must be a 1-D integer array, got {positions.dtype} {positions.shape}")
    if positions is not None and positions.size and int(positions.min()) < 0:
        raise ValueError(f"{kd.POSITIONS} must not be negative")
    reason = check_bounded(arrays, _config(context).max_abs_value)
    if reason is not None:
        raise ValueError(f"instruction refused: {reason}")
    config = dict(record(msg.content, kd.CONFIG))
    config.pop(kd.CLIENT_STATE_ROUND, None)  # for the ClientApp only
    odd = sorted(key for key, value in config.items() if not isinstance(value, (bool, int, float, str)))
    if odd:  # dropped, a setting would fall back to its default without a word (bytes for a dtype: float32 logits)
        raise ValueError(f"config {odd[0]!r} must be a bool, number or string, got {type(config[odd[0]]).__name__}")
    return Instruction(arrays, config)


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Identify this node's partition (and its private set size): the one query of the protocol."""
    action = scalar_of(msg.content, kd.CONFIG, kd.ACTION)
    if action != kd.HELLO:
        raise ValueError(f"a query must say {kd.ACTION}={kd.HELLO!r}, got {str(action)[:40]!r}")
    federation, _ = _client(context)
    partition_id = _partition_id(context)
    metrics = MetricRecord(
        {kd.PARTITION_ID: partition_id, kd.NUM_EXAMPLES: int(federation.client_idx[partition_id].size)}
    )
    return Message(RecordDict({kd.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train as instructed and answer the server."""
    server_round = _server_round(msg, context)
    state_round = _state_round(msg, server_round, training=True)
    _, client = _client(context, state_round)
    instruction = _instruction(msg, context, client, "train")
    answer = client.train(server_round, instruction)
    _save(context, client, server_round, state_round)
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
    server_round = _server_round(msg, context)
    state_round = _state_round(msg, server_round, training=False)
    federation, client = _client(context, state_round)
    instruction = _instruction(msg, context, client, "evaluate")
    distill = instruction.config.get(kd.DISTILL)
    if not isinstance(distill, bool):
        raise ValueError(f"{kd.DISTILL} must be a bool, got {distill!r}")
    report = instruction.config.get(kd.EVALUATE, True)
    if not isinstance(report, bool):
        raise ValueError(f"{kd.EVALUATE} must be a bool, got {report!r}")
    metrics: dict[str, MetricRecordValues] = {kd.PARTITION_ID: _partition_id(context)}
    if distill:
        if _held_round(context) == server_round and context.state.config_records[kd.CLIENT_STATE_OF].get(kd.DISTILL):
            # A message delivered twice would distil the same knowledge twice (Flower itself delivers once).
            raise ValueError(f"client {client.client_id} has taken in round {server_round}'s knowledge already")
        metrics |= client.receive(server_round, instruction)
        _save(context, client, server_round, state_round, distilled=True)
    if not report:
        return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=msg)
    metrics[kd.ACCURACY] = client.evaluate(*federation.test_set(_config(context), server_round))
    metrics[kd.PERSONALISED_ACCURACY] = client.evaluate_personal(*federation.personalised_test(_partition_id(context)))
    return Message(RecordDict({kd.METRICS: MetricRecord(metrics)}), reply_to=msg)
