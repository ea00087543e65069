"""One deployed client's view of the federation: the public transfer set, a test set and its own data only.

A simulated client process may build the whole federation (:func:`~fl_kd.kd.federation.build_federation`) because
every party lives on one machine. A deployed node must not: it holds its private data (named by its node config,
see :mod:`fl_kd.data.node_local`) and the transfer set, which comes from the experiment's named public dataset, split
with the experiment's seed exactly as the server splits it. :func:`node_federation` returns a
:class:`~fl_kd.kd.federation.Federation` in which every other client holds nothing, so the algorithms' client
builders (``build_client(cfg, federation, client_id)``) work unchanged and cannot reach another client's data.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fl_kd.data import DatasetSplits, personalised_test_indices
from fl_kd.data.node_local import NodeConfigError, NodeData, NodeSpec, load_node_data
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.kd.seeding import derive_seed


def node_federation(cfg: ExperimentConfig, spec: NodeSpec) -> Federation:
    """The federation as node ``spec`` sees it (its private data from ``data-dir`` or, for demos, ``dataset``).

    Raises
    ------
    NodeConfigError
        The node does not fit the experiment (client id, federation size, dataset name, unknown tier), or its
        data folder is unusable.
    """
    if not spec.node_local:
        raise NodeConfigError("the node config names no data (data-dir or dataset)")
    spec.check_federation(cfg.num_clients)
    if spec.dataset is not None and spec.dataset != cfg.dataset.name:
        raise NodeConfigError(
            f"node config dataset={spec.dataset!r} but the experiment's public dataset is {cfg.dataset.name!r}"
        )
    # The public dataset gives the transfer set (and the test split); with `dataset=` it also gives the node's
    # partition, split as in simulation, from which only this client's rows are kept.
    public = build_federation(cfg)
    if spec.dataset is not None:
        own = NodeData(*public.client_data(spec.client_id))
    else:
        assert spec.data_dir is not None
        own = load_node_data(spec.data_dir, tuple(public.data.input_shape), public.data.num_classes)
    return _client_view(cfg, public, spec, own)


def _client_view(cfg: ExperimentConfig, public: Federation, spec: NodeSpec, own: NodeData) -> Federation:
    """A federation holding the transfer set, ``own`` as client ``spec.client_id``'s data, and nobody else's."""
    data = public.data
    labelled, unlabelled = public.num_labelled, int(public.unlabelled_idx.size)
    rows = torch.from_numpy(np.concatenate([public.transfer_idx, public.unlabelled_idx]))
    x_train = torch.cat([data.x_train[rows], own.x_train])
    y_train = torch.cat([data.y_train[rows], own.y_train])
    x_test, y_test = (data.x_test, data.y_test) if own.x_test is None else (own.x_test, own.y_test)
    assert y_test is not None
    view = DatasetSplits(
        data.name, x_train, y_train, x_test, y_test, data.num_classes, data.input_shape, data.class_names,
        data.feature_names,
    )  # fmt: skip
    empty = np.zeros(0, dtype=np.int64)
    client_idx = [empty] * cfg.num_clients
    client_idx[spec.client_id] = np.arange(labelled + unlabelled, len(y_train), dtype=np.int64)
    personalised = [empty] * cfg.num_clients
    if own.x_test is None:  # the public test split, drawn to follow this client's labels as in simulation
        counts = np.bincount(own.y_train.numpy(), minlength=data.num_classes)
        seed = derive_seed(cfg.seed, spec.client_id, "personalised_test")
        personalised[spec.client_id] = personalised_test_indices(
            y_test.numpy(), counts, cfg.personalised_test_size, seed
        )
    else:  # the node's own test set is its distribution already
        personalised[spec.client_id] = np.arange(len(y_test), dtype=np.int64)
    tiers = list(public.tiers)
    if spec.device_tier is not None:
        try:
            tiers[spec.client_id] = cfg.device_profile.tier(spec.device_tier)
        except ValueError as err:
            raise NodeConfigError(f"node config device-tier: {err}") from None
    return dataclasses.replace(
        public,
        data=view,
        transfer_idx=np.arange(labelled, dtype=np.int64),
        unlabelled_idx=np.arange(labelled, labelled + unlabelled, dtype=np.int64),
        client_idx=client_idx,
        tiers=tiers,
        personalised_test_idx=personalised,
    )
