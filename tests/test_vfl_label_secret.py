"""The label party's secret lives on its node only: nothing a feature party holds or receives determines it.

A feature party sees its run config, its node config, its own ``context.state`` and the messages it is sent. Two
runs that differ only in the label party's node-local secret give it the same run config and node config and the
same messages up to the first gradient, and then different gradients: the keys and noise of the defence follow
from the secret, not from anything the feature party has. The same secret gives the same numbers every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Message

from fl_kd.clients import vfl_party
from fl_kd.clients.vfl_app import app as client_app
from fl_kd.config import from_mapping
from fl_kd.strategies.vfl import VFLServer
from fl_kd.vfl import protocol as vp
from fl_kd.vfl.config import VFLRunConfig
from fl_kd.vfl.defences.randomised_label import fake_labels
from fl_kd.vfl.experiment import prepare_data
from fl_kd.vfl.secret import LABEL_SECRET, LABEL_SECRET_FILE, data_secret, defence_seed, label_party_secret
from tests.flower_loopback import LoopbackGrid

DEFENCES = {
    "randomised_label": {"name": "randomised_label", "params": {"epsilon": 0.5}},
    # An explicit seed sits in the run config, which every party reads: it must not make the noise recomputable.
    "gaussian with a public seed": {"name": "gaussian", "params": {"scale": 0.01, "seed": 7}},
}


def _config(defence: dict[str, Any]) -> VFLRunConfig:
    training = {"epochs": 1, "batch_size": 128}
    return from_mapping(VFLRunConfig, {"seed": 3, "training": training, "attack": {}, "defence": defence})


class SecretRun:
    """One Flower run (loopback) whose label node's config holds ``label_node_config``; every message recorded."""

    def __init__(self, cfg: VFLRunConfig, label_node_config: dict[str, str | int]) -> None:
        self.sent: list[Message] = []

        def record(message: Message, reply: Message) -> list[Message]:
            self.sent.append(message)
            return [reply]

        nodes = cfg.num_feature_parties + 1
        node_configs: list[dict[str, str | int]] = [{} for _ in range(nodes - 1)] + [label_node_config]
        self.grid = LoopbackGrid(client_app, nodes, {vp.CONFIG_KEY: vp.encode_config(cfg)}, record, node_configs)
        self.results = VFLServer(cfg).run(self.grid)
        roles = {node: vp.party_role(c.node_config, cfg.num_feature_parties) for node, c in self.grid.contexts.items()}
        self.label_node = next(node for node, role in roles.items() if role.is_label)
        self.feature_nodes = sorted(node for node, role in roles.items() if not role.is_label)

    def feature_view(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Everything the feature parties were sent, in order: destination, message type and content as bytes."""
        return [
            (m.metadata.dst_node_id, m.metadata.message_type, _content(m))
            for m in self.sent
            if m.metadata.dst_node_id in self.feature_nodes
        ]


def _content(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, found in message.content.items():
        if isinstance(found, ArrayRecord):
            out[name] = {key: (array.dtype, tuple(array.shape), array.data) for key, array in found.items()}
        else:
            out[name] = dict(found)
    return out


def _carries_a_gradient(entry: tuple[int, str, dict[str, Any]]) -> bool:
    return any(key.startswith("grad.") for key in entry[2].get(vp.ARRAYS, {}))


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_the_secret_is_the_label_nodes_alone_and_decides_what_the_feature_party_gets(defence: str) -> None:
    cfg = _config(DEFENCES[defence])
    alpha, beta = SecretRun(cfg, {LABEL_SECRET: "alpha"}), SecretRun(cfg, {LABEL_SECRET: "beta"})
    # The feature party's context is the same in both runs, and holds nothing of the secret.
    for node in alpha.feature_nodes:
        ours, theirs = alpha.grid.contexts[node], beta.grid.contexts[node]
        assert ours.run_config == theirs.run_config and ours.node_config == theirs.node_config
        assert vfl_party.LABEL_SECRET not in ours.state and LABEL_SECRET not in ours.node_config
    secrets = [vfl_party.label_secret(run.grid.contexts[run.label_node]) for run in (alpha, beta)]
    assert secrets[0] != secrets[1]
    assert all(str(secret) not in str(alpha.grid.contexts[alpha.label_node].run_config) for secret in secrets)
    # What the feature party is sent is the same up to its first gradient, which the secret changes.
    view_a, view_b = alpha.feature_view(), beta.feature_view()
    first = next(index for index, entry in enumerate(view_a) if _carries_a_gradient(entry))
    assert first > 0 and view_a[:first] == view_b[:first]
    assert _carries_a_gradient(view_b[first]) and view_a[first] != view_b[first]
    # The same secret gives the same numbers, message for message.
    again = SecretRun(cfg, {LABEL_SECRET: "alpha"})
    assert again.feature_view() == view_a
    assert again.results["mp"] == alpha.results["mp"] and again.results["train_loss"] == alpha.results["train_loss"]


def test_randomised_labels_need_the_secret_and_each_seed_draws_anew() -> None:
    cfg = _config(DEFENCES["randomised_label"])
    data = prepare_data(cfg)
    ids, labels = torch.from_numpy(data.train_ids), data.train_labels

    def fakes(secret: int, seed: int = cfg.seed) -> torch.Tensor:
        return fake_labels(defence_seed(secret, seed, "randomised_label"), ids, labels, 2, 0.5)

    alpha, beta = (label_party_secret({LABEL_SECRET: key}, labels) for key in ("alpha", "beta"))
    assert not torch.equal(fakes(alpha), fakes(beta))
    assert torch.equal(fakes(alpha), fakes(alpha))
    # Each seed is a draw of its own: the seeds of a benchmark once shared one draw where the data (and so the
    # secret drawn from it) was the same. The seed is public; the draw still needs the secret.
    assert not torch.equal(fakes(alpha), fakes(alpha, seed=cfg.seed + 1))
    # Without a secret a defence on its own keys from the seed, as before; that is never the party's key.
    assert defence_seed(None, cfg.seed, "randomised_label") == cfg.seed
    assert defence_seed(alpha, cfg.seed, "randomised_label") != defence_seed(alpha, cfg.seed, "gaussian")


def test_where_the_label_party_reads_its_secret(tmp_path: Path) -> None:
    labels = torch.tensor([0, 1, 1, 0, 1])
    features = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    key = tmp_path / "label.key"
    key.write_bytes(b"alpha")
    from_file = label_party_secret({LABEL_SECRET_FILE: str(key)}, labels)
    assert from_file == label_party_secret({LABEL_SECRET: "alpha"}, labels) != data_secret(labels)
    assert label_party_secret({LABEL_SECRET_FILE: str(key), LABEL_SECRET: "beta"}, labels) == from_file
    # A node that names none keys from its private data: every label and its own columns count.
    assert label_party_secret({}, labels, features) == data_secret(labels, features)
    flipped = labels.clone()
    flipped[3] = 1
    assert len({data_secret(labels), data_secret(flipped), data_secret(labels, features)}) == 3
    assert 0 <= data_secret(labels) < 2**62
    with pytest.raises(ValueError, match=LABEL_SECRET_FILE):
        label_party_secret({LABEL_SECRET_FILE: str(tmp_path / "missing.key")}, labels)
    (tmp_path / "empty.key").write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        label_party_secret({LABEL_SECRET_FILE: str(tmp_path / "empty.key")}, labels)


def test_a_bad_key_file_stops_the_run_at_setup_with_its_reason(tmp_path: Path) -> None:
    cfg = _config(DEFENCES["randomised_label"])
    with pytest.raises(RuntimeError, match="setup failed.*label-secret-file"):
        SecretRun(cfg, {LABEL_SECRET_FILE: str(tmp_path / "missing.key")})
