"""Hydra configs, the report entry point, and a real Flower simulation (`flwr run`) against the reference runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fl_kd.config import ConfigError
from fl_kd.kd.federation import build_federation
from fl_kd.simulations import flower_launcher
from fl_kd.simulations.config import experiment_config
from fl_kd.simulations.flower_launcher import superlink_processes
from fl_kd.simulations.report import write_reports
from fl_kd.simulations.run import run_experiment

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fl_kd.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_validates() -> None:
    cfg = experiment_config(_compose())
    assert cfg.dataset.name == "digits"
    assert cfg.partition.name == "dirichlet" and cfg.partition.alpha == 0.5
    assert [tier.name for tier in cfg.device_profile.tiers] == ["low", "mid", "high"]


#: Options that cannot run with the default of another group, and what they need instead.
NEEDS = {
    ("strategy", "fedavg"): ("device_profile=homogeneous",),
    ("strategy", "fedgems_plus"): ("transfer.unlabelled=40",),
    ("strategy", "fedgems_plus_screened"): ("transfer.unlabelled=40",),
}


@pytest.mark.parametrize("group", ["dataset", "partition", "device_profile", "strategy", "simulation"])
def test_every_group_option_composes_and_validates(group: str) -> None:
    for option in sorted(path.stem for path in (CONF / group).glob("*.yaml")):
        experiment_config(_compose(f"{group}={option}", *NEEDS.get((group, option), ())))


def test_fedgems_plus_without_an_unlabelled_part_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"transfer.unlabelled > 0"):
        experiment_config(_compose("strategy=fedgems_plus"))


def test_fedavg_refuses_several_architectures() -> None:
    with pytest.raises(ConfigError, match="device_profile=homogeneous"):
        experiment_config(_compose("strategy=fedavg"))


@pytest.mark.parametrize(
    ("raw_change", "message"),
    [
        (lambda c: c["partition"].update(alhpa=0.1), "alhpa"),  # misspelt key inside a group file
        (lambda c: c["strategy"].update(rounds="many"), "rounds"),  # wrong type
        (lambda c: c["device_profile"]["tiers"]["low"].update(shares=0.2), "shares"),
        (lambda c: c["strategy"].update(weighting="softmax"), "weighting"),
        (lambda c: c["strategy"].update(fraction_fit=0.0), "fraction_fit"),
        (lambda c: c["device_profile"]["tiers"]["low"].update(share=0.9), "device_profile"),
    ],
)
def test_config_mistakes_are_errors(raw_change, message: str) -> None:  # noqa: ANN001
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(_compose(), resolve=True)
    raw_change(raw)
    with pytest.raises(ConfigError, match=message):
        experiment_config(raw)


def test_misspelt_command_line_override_is_rejected_by_hydra() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose("partition.alhpa=0.1")


def test_report_shows_skew_and_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skewed = write_reports(experiment_config(_compose("partition.alpha=0.1")), tmp_path / "skewed")
    near_iid = write_reports(experiment_config(_compose("partition.alpha=100")), tmp_path / "iid")
    assert skewed["label_skew"] > 3 * near_iid["label_skew"]
    printed = capsys.readouterr().out
    assert "resnet_server" in printed and "cnn_tiny" in printed
    saved = json.loads((tmp_path / "skewed" / "partition_report.json").read_text())
    assert saved["label_skew"] == pytest.approx(skewed["label_skew"])
    # The report shows the federation a run would build, not a look-alike.
    federation = build_federation(experiment_config(_compose("partition.alpha=0.1")))
    assert saved["sizes"] == [int(idx.size) for idx in federation.client_idx]
    assert skewed["client_tiers"] == [tier.name for tier in federation.tiers]
    assert not (tmp_path / "skewed" / "summary.json").exists()  # the name of a finished run's summary
    assert f"reports saved in {tmp_path / 'iid'}" in printed


TINY = (
    "num_clients=3",
    "transfer.labelled=60",
    "device_profile=homogeneous",
    "device_profile.server_model=cnn_small",
    "strategy.rounds=2",
    "strategy.server_epochs=1",
    "partition.min_size=20",
    "seed=3",
)


@pytest.mark.slow
def test_flower_simulation_matches_the_in_process_runner(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_dirs: list[Path] = []
    fresh_ray_dir = flower_launcher.ray_temp_dir

    def recorded_ray_dir() -> Path:
        ray_dirs.append(fresh_ray_dir())
        return ray_dirs[-1]

    monkeypatch.setattr(flower_launcher, "ray_temp_dir", recorded_ray_dir)
    flower_rows = run_experiment(experiment_config(_compose(*TINY)), tmp_path / "flower")
    captured = capfd.readouterr()
    # The console gets one line per round and nothing else; Flower's start-up and log stream go to the run folder's
    # flower.log, its metric dumps to server.log.
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["round 1", f"server {flower_rows[0]['server_acc']:.4f}"],
        ["round 2", f"server {flower_rows[1]['server_acc']:.4f}"],
    ]
    assert "Successfully started run" in (tmp_path / "flower" / "flower.log").read_text()
    assert "Aggregated MetricRecord" in (tmp_path / "flower" / "server.log").read_text()
    inprocess_rows = run_experiment(
        experiment_config(_compose(*TINY, "simulation.backend=inprocess")), tmp_path / "inprocess"
    )

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]

    assert len(flower_rows) == 2
    assert strip(flower_rows) == strip(inprocess_rows)
    for run in ("flower", "inprocess"):
        folder = tmp_path / run
        for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "accuracy.png", "bytes.png"):
            assert (folder / name).is_file(), f"{run}: {name} missing"
    # The launcher stops the local SuperLink it started.
    assert superlink_processes(tmp_path / "flower" / ".flwr") == []
    # Ray's session logs end in the run folder, and its temporary folder (sockets and all) is gone.
    assert (tmp_path / "flower" / "ray_logs" / "raylet.out").is_file()
    assert len(ray_dirs) == 1 and not ray_dirs[0].exists()


#: Every peer drives the same generic ServerApp and ClientApp, and each one's messages are checked against the
#: in-process runner on a loopback grid in its own test file (``test_<peer>.py``, about a second each). Through
#: ``flwr run`` (30 s each) go the peer that sends whole models and the one whose clients keep a flag in the
#: ClientApp's state between rounds, which only separate Ray workers can break.
PEERS = ("fedavg_server_model", "fedmd")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", PEERS)
def test_every_peer_runs_through_flwr_run_as_in_process(strategy: str, tmp_path: Path) -> None:
    """Each registered peer, 2 rounds of a tiny federation through `flwr run`, equals the in-process runner."""
    overrides = (*(o for o in TINY if not o.startswith("strategy.")), f"strategy={strategy}", "strategy.rounds=2")
    flower_rows = run_experiment(experiment_config(_compose(*overrides)), tmp_path / "flower")
    inprocess_rows = run_experiment(
        experiment_config(_compose(*overrides, "simulation.backend=inprocess")), tmp_path / "inprocess"
    )
    strip = [{k: v for k, v in row.items() if k != "wall_seconds"} for row in flower_rows]
    assert len(flower_rows) == 2 and all(row["n_rejected"] == 0 and row["n_missing"] == 0 for row in flower_rows)
    assert strip == [{k: v for k, v in row.items() if k != "wall_seconds"} for row in inprocess_rows]
    assert superlink_processes(tmp_path / "flower" / ".flwr") == []


@pytest.mark.slow
def test_a_user_error_the_server_app_raises_reaches_the_console_as_one_line(tmp_path: Path) -> None:
    """``flwr run`` exits 0 whatever the ServerApp raised: its error comes back through the run folder, as the
    in-process runner's does, not as "ended before writing its rounds" and a traceback."""
    # The residual server on the default transfer set: its loss turns NaN in round 1's distillation.
    overrides = [
        *("num_clients=3", "partition.min_size=20", "device_profile=homogeneous", "strategy.rounds=1", "seed=3"),
        "strategy.server_lr=100",
    ]
    with pytest.raises(ConfigError, match=r"^the server model diverged: .* Lower strategy\.server_lr$"):
        run_experiment(experiment_config(_compose(*overrides)), tmp_path / "flower")
    with pytest.raises(ConfigError, match=r"^the server model diverged"):
        run_experiment(experiment_config(_compose(*overrides, "simulation.backend=inprocess")), tmp_path / "inprocess")
    assert superlink_processes(tmp_path / "flower" / ".flwr") == []
