"""Each deployed client's data and node config: write partition folders, and say what ``--node-config`` names them.

A real federation's clients bring their own folders (layout: :mod:`fl_kd.data.node_local`). For a demo, or to check
a deployment against the simulation, this module writes each client's simulated partition of an experiment into
``<out>/client-<i>/`` and gives each SuperNode's node config (client id, device tier, data)::

    python -m fl_kd.simulations.node_data /srv/fl-kd/nodes num_clients=3 seed=0

takes the same overrides as ``fl-kd-deploy`` and prints one ``--node-config`` per client.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fl_kd.config import ConfigError
from fl_kd.data.node_local import DATA_DIR, DATASET, DEVICE_TIER, write_node_data
from fl_kd.kd.config import ExperimentConfig
from fl_kd.kd.federation import Federation, build_federation
from fl_kd.simulations.cli import user_errors_exit

NodeConfig = dict[str, str | int]


def client_folder(root: Path, client_id: int) -> Path:
    """Where client ``client_id``'s data folder goes under ``root``."""
    return root / f"client-{client_id}"


def write_partition_folders(
    experiment: ExperimentConfig, root: Path, federation: Federation | None = None
) -> list[NodeConfig]:
    """Write every client's partition (and nothing else) to its folder; return each node's config beyond its id.

    The folders hold the training rows of the client in simulation order, so a node reading one trains exactly
    as the simulated client does. The transfer set is not written: every node derives it from the public dataset.
    ``federation`` is ``experiment``'s, where the caller has built it already.
    """
    federation = build_federation(experiment) if federation is None else federation
    configs: list[NodeConfig] = []
    for client_id in range(federation.num_clients):
        x, y = federation.client_data(client_id)
        folder = write_node_data(client_folder(root, client_id), x.numpy(), y.numpy()).resolve()
        configs.append({DATA_DIR: str(folder), DEVICE_TIER: federation.tiers[client_id].name})
    return configs


def dataset_node_configs(experiment: ExperimentConfig) -> list[NodeConfig]:
    """Each node named the public dataset and its tier: it keeps its own partition of the dataset (demos)."""
    tiers = build_federation(experiment).tiers
    return [{DATASET: experiment.dataset.name, DEVICE_TIER: tier.name} for tier in tiers]


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """``python -m fl_kd.simulations.node_data OUT [overrides...]``: write the folders, print each node config.

    A mistake in an override or a value ends in one line and exit code 2, as with ``fl-kd-sim``.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from fl_kd.simulations.deploy_settings import split_deploy_settings
    from fl_kd.simulations.loopback import node_config_arg

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise SystemExit("usage: python -m fl_kd.simulations.node_data OUT_DIR [fl-kd-deploy overrides...]")
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        try:
            composed = compose(config_name="deploy", overrides=args[1:])
        except HydraException as err:  # an unknown key or a malformed override
            raise ConfigError(" ".join(str(err).split("\n"))) from err
        experiment, _ = split_deploy_settings(composed)
    try:
        configs = write_partition_folders(experiment, Path(args[0]))
    except OSError as err:  # a folder that cannot be made or written (no such parent, a file, no permission)
        raise ConfigError(f"cannot write the node data to {args[0]}: {err.strerror or err}") from None
    for client_id, config in enumerate(configs):
        node_config = {"partition-id": client_id, "num-partitions": experiment.num_clients, **config}
        print(f"client {client_id}: --node-config '{node_config_arg(node_config)}'")


if __name__ == "__main__":
    main()
