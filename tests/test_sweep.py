"""Sweeps: every job of a multirun runs even when one fails, and `fl-kd-table` turns hand-made job folders (no
training) into the expected table and figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from fl_kd.kd.runner import summarise
from fl_kd.results import RoundRecorder
from fl_kd.simulations.flower_launcher import stop_leftovers
from fl_kd.simulations.jobs import FAILED_FILE, JobFailure, record_failure
from fl_kd.simulations.sweep import collect, figure, main, table
from fl_kd.sweep_plots import sweep_overview_figure

PROFILE = {
    "name": "three_tier",
    "server_model": "resnet_server",
    "tiers": {
        "low": {"model": "cnn_tiny", "share": 0.4},
        "mid": {"model": "cnn_small", "share": 0.4},
        "high": {"model": "cnn_medium", "share": 0.2},
    },
}  # 10 clients: 4 low, 4 mid, 2 high


def _row(round_: int, server: float, client: float, uplink: float, sim: float) -> dict[str, Any]:
    return {
        "round": round_,
        "server_acc": server,
        "client_acc_mean": client,
        "client_pacc_mean": client + 0.1,
        "uplink_bytes": uplink,
        "downlink_bytes": 2 * uplink,
        "wall_seconds": 1.5,
        "sim_seconds": sim,
        # per sampled client of each tier; weighted 4:4:2 -> (4*1 + 4*2 + 2*6) / 10 = 2.4 (x scale)
        "client_flops_low": 1e6,
        "client_flops_mid": 2e6,
        "client_flops_high": 6e6,
        "client_uplink_bytes_low": uplink / 10 * 0.5,
        "client_uplink_bytes_mid": uplink / 10 * 1.0,
        "client_uplink_bytes_high": uplink / 10 * 2.0,  # weighted: uplink / 10
        "client_downlink_bytes_low": uplink / 5,
        "client_downlink_bytes_mid": uplink / 5,
        "client_downlink_bytes_high": uplink / 5,
    }


def _folder(sweep: Path, name: str, overrides: list[str]) -> Path:
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    config = {"seed": seed, "num_clients": 10, "device_profile": PROFILE}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _finished(sweep: Path, name: str, overrides: list[str], rows: list[dict[str, Any]]) -> None:
    folder = _folder(sweep, name, overrides)
    recorder = RoundRecorder(folder)
    for row in rows:
        recorder.record(row)
    summary = summarise(rows, wall_seconds=sum(row["wall_seconds"] for row in rows))
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """fedgems with two seeds, fedavg_server_model with one finished and one failed seed, dsfl unfinished."""
    _finished(
        tmp_path,
        "0",
        ["strategy=fedgems", "strategy.rounds=2", "seed=0"],
        [_row(1, 0.65, 0.3, 1000, 3.0), _row(2, 0.6, 0.4, 1000, 5.0)],
    )
    _finished(
        tmp_path,
        "1",
        ["strategy=fedgems", "strategy.rounds=2", "seed=1"],
        [_row(1, 0.5, 0.2, 1000, 3.0), _row(2, 0.8, 0.6, 1000, 5.0)],
    )
    _finished(
        tmp_path,
        "2",
        ["strategy=fedavg_server_model", "strategy.rounds=2", "seed=0"],
        [_row(1, 0.7, 0.7, 1e8, 20.0), _row(2, 0.9, 0.8, 1e8, 30.0)],
    )
    failed = _folder(tmp_path, "3", ["strategy=fedavg_server_model", "strategy.rounds=2", "seed=1"])
    record_failure(failed, JobFailure(3, ["strategy=fedavg_server_model"], "RuntimeError", "boom\ndetail", False))
    _folder(tmp_path, "10", ["strategy=dsfl", "strategy.rounds=2", "seed=0"])
    return tmp_path


def test_jobs_are_grouped_by_everything_but_the_seed_in_sweep_order(sweep: Path) -> None:
    jobs = collect(sweep)
    assert [job.name for job in jobs] == ["0", "1", "2", "3", "10"]
    assert [job.setting for job in jobs] == ["strategy=fedgems"] * 2 + ["strategy=fedavg_server_model"] * 2 + [
        "strategy=dsfl"
    ]
    assert [job.status for job in jobs] == ["finished"] * 3 + ["failed", "did not finish"]
    assert jobs[1].seed == "1" and jobs[3].error == "RuntimeError: boom"


def test_table_gives_accuracy_mean_and_std_over_seeds_and_device_cost(sweep: Path) -> None:
    markdown = table(collect(sweep))
    assert markdown.startswith("All jobs: `strategy.rounds=2`\n")
    lines = markdown.splitlines()
    header = lines[2].split(" | ")
    assert header[1:4] == ["seeds", "server acc, final", "server acc, best"]
    fedgems = next(line for line in lines if line.startswith("| strategy=fedgems |"))
    assert fedgems.split(" | ")[1:] == [
        "2",
        "0.7000 ± 0.1414",  # final server accuracy 0.6 and 0.8
        "0.7250 ± 0.1061",  # best: 0.65 and 0.8
        "0.5000 ± 0.1414",  # final client accuracy 0.4 and 0.6
        "0.6000 ± 0.1414",  # personalised
        "100 B",  # per client per round: tiers weighted 4:4:2
        "200 B",
        "4 s",  # mean of the rounds' sim_seconds 3 and 5
        "2.4 MFLOP",
        "3 ± 0 s |",  # two rounds of 1.5 s
    ]
    fedavg = next(line for line in lines if line.startswith("| strategy=fedavg_server_model |"))
    assert fedavg.split(" | ")[1:4] == ["1 of 2", "0.9000", "0.9000"]
    assert "| 10 MB | 20 MB | 25 s |" in fedavg
    assert "| strategy=dsfl | 0 of 1 | – | – |" in markdown
    # Failed and unfinished jobs are listed, not dropped.
    assert "Jobs without results (2 of 5):" in markdown
    assert "| 3 | strategy=fedavg_server_model | 1 | failed | RuntimeError: boom |" in markdown
    assert "| 10 | strategy=dsfl | 0 | did not finish |" in markdown


def _legend(fig: Any) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def _whole_ticks(ax: Any) -> list[float]:
    low, high = ax.get_xlim()
    ticks = [float(t) for t in ax.get_xticks() if low <= t <= high]
    assert all(t == int(t) for t in ticks)
    return ticks


def test_figure_plots_accuracy_over_rounds_and_against_cost(sweep: Path) -> None:
    fig = figure(collect(sweep))
    axes = fig.axes
    assert len(axes) == 8  # server and client accuracy x rounds, uplink, simulated time, client FLOPs
    assert [ax.get_title() for ax in axes[:4]] == [
        "over rounds",
        "against uplink traffic",
        "against simulated time",
        "against client compute",
    ]
    assert [ax.get_xlabel() for ax in axes[4:]] == [
        "round",
        "cumulative uplink, all clients (MB)",
        "cumulative simulated time (s)",
        "cumulative training FLOPs per client (MFLOP)",
    ]
    assert [axes[0].get_ylabel(), axes[4].get_ylabel()] == ["server accuracy", "client accuracy (mean)"]
    assert _legend(fig) == ["strategy=fedgems (2 seeds)", "strategy=fedavg_server_model (1 seed)"]
    assert "all jobs: rounds=2" in fig._suptitle.get_text()
    assert "2 jobs without results not shown" in fig._suptitle.get_text()
    assert _whole_ticks(axes[0]) == [1.0, 2.0] and _whole_ticks(axes[4]) == [1.0, 2.0]
    fedgems = axes[0].get_lines()[0]
    assert list(fedgems.get_ydata()) == pytest.approx([0.575, 0.7])  # mean over the two seeds
    assert list(axes[2].get_lines()[0].get_xdata()) == pytest.approx([3.0, 8.0])  # cumulative simulated seconds
    assert list(axes[3].get_lines()[0].get_xdata()) == pytest.approx([2.4, 4.8])  # MFLOP per client, cumulative
    assert axes[1].get_xscale() == "log"  # weights (100 MB a round) beside logits (1 kB a round)
    uplink = [list(line.get_xdata()) for line in axes[1].get_lines()]
    assert uplink == [pytest.approx([0.001, 0.002]), pytest.approx([100.0, 200.0])]  # MB
    low, high = axes[1].get_xlim()
    assert low <= 0.001 and high >= 200.0  # every line inside the drawn range
    assert axes[2].get_xscale() == "linear"


def test_a_metric_no_run_recorded_gets_no_panel() -> None:
    runs = [[{"round": r, "server_acc": 0.1 * r, "uplink_bytes": 10.0} for r in (1, 2, 3)]]
    fig = sweep_overview_figure({"partition.alpha=0.1": runs})
    assert [ax.get_title() for ax in fig.axes] == ["over rounds", "against uplink traffic"]
    assert fig.axes[1].get_xlabel() == "cumulative uplink, all clients (B)"
    assert _legend(fig) == ["alpha=0.1 (1 seed)"]


def test_fl_kd_table_writes_markdown_and_png(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(sweep)])
    markdown = (sweep / "sweep.md").read_text()
    assert markdown == table(collect(sweep))
    assert (sweep / "sweep.png").stat().st_size > 0
    assert "| strategy=fedgems | 2 |" in capsys.readouterr().out


def test_fl_kd_table_of_a_folder_that_is_not_there_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "typo")])
    assert exit_info.value.code == 2 and "typo is no folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- jobs of a multirun

APP = """
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from fl_kd.config import ConfigError
    from fl_kd.simulations.cli import user_errors_exit
    from fl_kd.simulations.jobs import run_command, sweep_job


    @hydra.main(version_base=None, config_path=None)
    @user_errors_exit
    @sweep_job
    def task(cfg):
        if cfg.x == 2:
            raise ConfigError("x: 2 is not allowed")
        if cfg.x == 3:
            raise RuntimeError("boom\\nsecond line")
        if cfg.x == 5:
            print("interrupted (Ctrl-C); every process of the run was stopped", flush=True)
            raise KeyboardInterrupt  # what an interrupted run lets go on in a sweep, after its one line
        (Path(HydraConfig.get().runtime.output_dir) / "done").write_text("ok")


    if __name__ == "__main__":
        run_command(task)
"""


def _app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, str(tmp_path / "app.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path)


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = _app(tmp_path, "-m", "+x=1,2,3,4", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr
    assert [(sweep / str(i) / "done").is_file() for i in range(4)] == [True, False, False, True]
    user = json.loads((sweep / "1" / FAILED_FILE).read_text())
    assert user["error_type"] == "ConfigError" and user["user_error"] and user["overrides"] == ["+x=2"]
    crash = json.loads((sweep / "2" / FAILED_FILE).read_text())
    assert crash["message"] == "boom\nsecond line" and "Traceback" in crash["traceback"]
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"job #1 (+x=2) failed: ConfigError: x: 2 is not allowed [{sweep / '1' / FAILED_FILE}]",
        f"job #2 (+x=3) failed: RuntimeError: boom [{sweep / '2' / FAILED_FILE}]",
        f"sweep: 2 of 4 jobs failed (#1, #2), 2 finished; each failed job's folder has {FAILED_FILE}",
    ]
    assert "all 4 jobs" not in result.stdout


def test_a_sweep_without_failures_exits_0_and_a_single_run_keeps_exit_2(tmp_path: Path) -> None:
    result = _app(tmp_path, "-m", "+x=1,4", f"hydra.sweep.dir={tmp_path / 'ok'}")
    assert result.returncode == 0 and "sweep: all 2 jobs finished" in result.stdout
    result = _app(tmp_path, "+x=2", f"hydra.run.dir={tmp_path / 'single'}")
    assert result.returncode == 2 and result.stderr.strip() == "error: x: 2 is not allowed"
    # The single run's folder says why it stopped, so fl-kd-table lists it as failed, not as still running.
    single = json.loads((tmp_path / "single" / FAILED_FILE).read_text())
    assert single["error_type"] == "ConfigError" and single["user_error"] and single["overrides"] == ["+x=2"]
    result = _app(tmp_path, "+x=1", f"hydra.run.dir={tmp_path / 'single'}")
    assert result.returncode == 0 and not (tmp_path / "single" / FAILED_FILE).exists()  # a rerun that works


def test_fl_kd_sim_sweep_of_bad_checkpoints_fails_job_by_job(tmp_path: Path) -> None:
    """Both jobs fail before training (no such checkpoint): each is recorded, and fl-kd-table lists them."""
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    overrides = ["strategy.checkpoint=/nonexistent/a.pt,/nonexistent/b.pt", f"hydra.sweep.dir={sweep}"]
    command = [sys.executable, "-m", "fl_kd.simulations.run", "-m", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.parent.name for p in sweep.glob(f"*/{FAILED_FILE}")) == ["0", "1"]
    main([str(sweep)])
    markdown = (sweep / "sweep.md").read_text()
    assert "| 1 | strategy.checkpoint=/nonexistent/b.pt | 0 | failed | CheckpointError:" in markdown
    assert not (sweep / "sweep.png").exists()


def test_fl_kd_vfl_sweep_goes_on_past_a_bad_job_and_a_refused_rerun_leaves_no_earlier_results(tmp_path: Path) -> None:
    """A bad value in one VFL job ended the whole sweep; a refused run in a reused folder left the earlier
    run's results.json beside the new config.yaml."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    vfl = [sys.executable, "-m", "fl_kd.simulations.vfl"]
    sweep = tmp_path / "sweep"
    settings = ["simulation.backend=inprocess", "training.epochs=-1,1", "training.max_train_samples=64"]
    command = [*vfl, "-m", *settings, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert (sweep / "0" / FAILED_FILE).is_file() and (sweep / "1" / "results.json").is_file()
    assert "sweep: 1 of 2 jobs failed (#0), 1 finished" in result.stderr
    single = tmp_path / "single"
    for epochs in (1, -1):
        settings = ["simulation.backend=inprocess", f"training.epochs={epochs}", "training.max_train_samples=64"]
        command = [*vfl, *settings, f"hydra.run.dir={single}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 2 and not (single / "results.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes are found through /proc")
def test_stop_leftovers_stops_the_jobs_flower_processes_only(tmp_path: Path) -> None:
    def sleeper(flwr_home: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "FLWR_HOME": str(flwr_home)}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)

    ours, job_10 = sleeper(tmp_path / "1" / ".flwr"), sleeper(tmp_path / "10" / ".flwr")
    try:
        assert stop_leftovers(tmp_path / "1" / ".flwr") == 1
        assert ours.wait(timeout=10) != 0
        assert job_10.poll() is None  # job 10's folder starts with job 1's name, but is another job
    finally:
        for process in (ours, job_10):
            process.kill()
            process.wait()


def test_an_unreadable_job_is_listed_and_the_rest_of_the_sweep_is_tabled(sweep: Path) -> None:
    """A half-written summary, a metrics line cut short, a stale summary beside failed.json, a null server accuracy
    (JSON's NaN): each crashed the whole table, or hid a failure, before."""
    (sweep / "0" / "summary.json").write_text('{"final_server_acc": 0.')
    with (sweep / "1" / "metrics.jsonl").open("a") as handle:
        handle.write('{"round": 3, "server')
    (sweep / "3" / "summary.json").write_text(json.dumps({"final_server_acc": 0.99}))  # an earlier attempt's
    _finished(
        sweep,
        "4",
        ["strategy=fedmd", "strategy.rounds=2", "seed=0"],
        [_row(1, float("nan"), 0.3, 1000, 3.0), _row(2, float("nan"), 0.4, 1000, 5.0)],
    )
    jobs = {job.name: job for job in collect(sweep)}
    assert jobs["0"].status == jobs["1"].status == "unreadable"
    assert "JSONDecodeError" in jobs["0"].error and "metrics.jsonl:3: not a JSON row" in jobs["1"].error
    assert jobs["3"].status == "failed" and jobs["4"].status == "finished"
    markdown = table(list(jobs.values()))
    fedmd = next(line for line in markdown.splitlines() if line.startswith("| strategy=fedmd |"))
    assert fedmd.split(" | ")[1:3] == ["1", "–"]  # no server accuracy: shown as none, not a crash
    assert "| 0 | " in markdown and "| unreadable |" in markdown


def test_an_unreadable_job_stays_in_its_setting_and_a_summary_that_is_no_object_is_unreadable(sweep: Path) -> None:
    """A summary of ``null`` crashed the table; an unreadable job once lost its overrides and made a row of its own
    ("(all jobs)") while its setting's row showed one seed as if all had run."""
    (sweep / "1" / "summary.json").write_text("null")
    jobs = {job.name: job for job in collect(sweep)}
    assert jobs["1"].status == "unreadable" and "summary.json holds no JSON object" in jobs["1"].error
    assert jobs["1"].setting == jobs["0"].setting == "strategy=fedgems" and jobs["1"].seed == "1"
    fedgems = next(line for line in table(list(jobs.values())).splitlines() if line.startswith("| strategy=fedgems |"))
    assert fedgems.split(" | ")[1] == "1 of 2"
    assert "(all jobs)" not in table(list(jobs.values()))


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("summary.json", '{"final_server_acc": "high"}'),
        ("summary.json", '{"final_server_acc": [0.5]}'),
        ("metrics.jsonl", '{"round": 1, "server_acc": "0.5x"}\n'),
        ("metrics.jsonl", '{"round": 1, "server_acc": 0.5, "sim_seconds": "3"}\n'),
        (".hydra/overrides.yaml", "seed=1\n"),
    ],
)
def test_a_figure_that_is_no_number_makes_its_job_unreadable_not_the_table(sweep: Path, file: str, text: str) -> None:
    """Each stopped ``fl-kd-table`` with a traceback; an overrides file of one string was read letter by letter."""
    (sweep / "1" / file).write_text(text)
    jobs = {job.name: job for job in collect(sweep)}
    assert jobs["1"].status == "unreadable" and jobs["0"].status == "finished"
    main([str(sweep)])
    assert "| unreadable |" in (sweep / "sweep.md").read_text()


def test_fl_kd_table_of_a_folder_without_jobs_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no job folders (.hydra/overrides.yaml) under" in capsys.readouterr().err


def test_an_fl_kd_vfl_sweep_is_named_as_such(tmp_path: Path) -> None:
    """Its jobs write results.json, not summary.json: they were listed as stopped or still running."""
    folder = _folder(tmp_path, "0", ["defence=none"])
    (folder / "results.json").write_text(json.dumps({"mp": 0.9}))
    (job,) = collect(tmp_path)
    assert job.status == "unreadable" and "an fl-kd-vfl run's: fl-kd-table reads fl-kd-sim sweeps" in job.error


def test_metrics_files_are_read_strictly_and_an_incomplete_run_is_not_finished(tmp_path: Path) -> None:
    from fl_kd.results import finished_rounds, read_metrics

    path = tmp_path / "metrics.jsonl"
    for text, message in (
        ('{"round": 1}\n{"round": 2, "ser', "metrics.jsonl:2: not a JSON row"),
        ('{"round": null}\n', "metrics.jsonl:1: a row without a round number"),
        ('{"round": 2}\n{"round": 1}\n{"round": 2}\n', "round 2 is written twice"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_metrics(tmp_path)
        assert finished_rounds(tmp_path, 0, 2) is None
    path.write_text('{"round": 2}\n{"round": 1}\n')
    assert [row["round"] for row in read_metrics(tmp_path)] == [1, 2]
    # Every row, but the ServerApp died before its summary (or the summary is an earlier attempt's): not finished.
    assert finished_rounds(tmp_path, 0, 2) is None
    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    assert finished_rounds(tmp_path, 0, 2) is not None and finished_rounds(tmp_path, 0, 3) is None
    older = path.stat().st_mtime_ns - 1_000_000_000
    os.utime(summary, ns=(older, older))
    assert finished_rounds(tmp_path, 0, 2) is None


def test_a_summary_of_rows_read_back_from_json_takes_null_as_nan() -> None:
    row: dict[str, Any] = {"round": 1, "server_acc": None, "uplink_bytes": 1, "downlink_bytes": 2}
    summary = summarise([row, {**row, "round": 2, "server_acc": 0.5}], wall_seconds=1.0)
    assert summary["best_server_acc"] == 0.5


def test_a_figure_over_fewer_seeds_than_the_row_says_how_many() -> None:
    from fl_kd.simulations.sweep import cell

    assert cell([0.5, float("nan")], lambda mean, std: f"{mean:.2f}") == "0.50 (1 of 2)"
    assert cell([0.5, 0.7], lambda mean, std: f"{mean:.2f}") == "0.60"
    assert cell([float("nan")], lambda mean, std: f"{mean:.2f}") == "–"


def test_a_seed_run_twice_counts_once_and_the_table_says_so(sweep: Path) -> None:
    _finished(
        sweep,
        "11",
        ["strategy=fedgems", "strategy.rounds=2", "seed=1"],  # job 1 again, with other figures
        [_row(1, 0.1, 0.1, 1000, 3.0), _row(2, 0.2, 0.2, 1000, 5.0)],
    )
    row = next(line for line in table(collect(sweep)).splitlines() if line.startswith("| strategy=fedgems "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2; seed 1 (2 jobs), the first kept"
    assert cells[2] == "0.7000 ± 0.1414"  # seeds 0 and 1 (0.6, 0.8), not the repeat's 0.2
    legend = [t.get_text() for t in figure(collect(sweep)).legends[0].get_texts()]
    assert "strategy=fedgems (2 seeds)" in legend, legend


def test_jobs_an_earlier_sweep_left_in_the_folder_stay_out_of_the_rows(sweep: Path) -> None:
    """A sweep of fewer seeds into the same folder leaves the earlier sweep's job 1 (fedgems, seed 1) behind."""
    launched = sweep / "multirun.yaml"
    launched.write_text("hydra: {}\n")
    started = launched.stat().st_mtime_ns
    for folder in ("0", "1", "2", "3", "10"):
        stamp = started + (-10 if folder == "1" else 10) * 1_000_000_000
        os.utime(sweep / folder / ".hydra" / "overrides.yaml", ns=(stamp, stamp))
        if (sweep / folder / "summary.json").is_file():  # written as the job ended, after Hydra's overrides
            os.utime(sweep / folder / "summary.json", ns=(stamp + 1, stamp + 1))
    jobs = collect(sweep)
    assert [job.status for job in jobs] == ["finished", "an earlier sweep's", "finished", "failed", "did not finish"]
    markdown = table(jobs)
    fedgems = next(line for line in markdown.splitlines() if line.startswith("| strategy=fedgems |"))
    assert fedgems.split(" | ")[1:3] == ["1", "0.6000"]  # seed 0 alone, not "1 of 2" nor a mean with seed 1's 0.8
    assert "| 1 | strategy=fedgems | 1 | an earlier sweep's | older than the sweep's multirun.yaml" in markdown
    launched.unlink()
    assert [job.status for job in collect(sweep)][1] == "finished"  # without it nothing can be told


def test_the_jobs_of_the_last_sweep_are_read_from_its_multirun_yaml_so_a_copy_without_file_times_keeps_them(
    sweep: Path,
) -> None:
    """A copy that gives every file a new time (``scp -r``) once had every job older than ``multirun.yaml``, and
    the table empty; the sweep's own overrides tell its jobs apart whatever the times."""
    task = ["strategy=fedgems,fedavg_server_model,dsfl", "strategy.rounds=2", "seed=0"]  # fewer seeds than before
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for folder in ("0", "1", "2", "3", "10"):  # every job older than multirun.yaml, as after such a copy
        os.utime(sweep / folder / ".hydra" / "overrides.yaml", ns=(0, 0))
    jobs = {job.name: job for job in collect(sweep)}
    assert {name: job.status for name, job in jobs.items()} == {
        "0": "finished",
        "1": "an earlier sweep's",  # seed 1
        "2": "finished",
        "3": "an earlier sweep's",  # seed 1
        "10": "did not finish",
    }
    assert "not among the jobs of the sweep's multirun.yaml" in jobs["1"].error


def test_a_folder_of_several_sweeps_checks_each_job_against_its_own_sweeps_multirun_yaml(tmp_path: Path) -> None:
    """Hydra's ``multirun/<date>`` holds one folder per sweep; given that parent, the table once read no
    ``multirun.yaml`` at all, and an earlier sweep's job left in one of them joined its setting's row."""
    rows = [_row(1, 0.6, 0.4, 1000, 3.0)]
    morning, noon = tmp_path / "09-00-00", tmp_path / "12-00-00"
    task = ["strategy=fedgems", "seed=0"]
    for sweep_dir in (morning, noon):
        sweep_dir.mkdir()
        (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
        _finished(sweep_dir, "0", ["strategy=fedgems", "seed=0"], rows)
    _finished(noon, "1", ["strategy=fedgems", "seed=1"], [_row(1, 0.9, 0.4, 1000, 3.0)])  # not in noon's sweep
    jobs = {job.name: job for job in collect(tmp_path)}
    assert {name: job.status for name, job in jobs.items()} == {
        "09-00-00/0": "finished",
        "12-00-00/0": "finished",
        "12-00-00/1": "an earlier sweep's",
    }
    assert {name: job.status for name, job in ((j.name, j) for j in collect(noon))} == {
        "0": "finished",
        "1": "an earlier sweep's",
    }


def test_the_figure_names_the_settings_the_table_names(sweep: Path) -> None:
    """An earlier sweep's job of other settings once took "all jobs: ..." out of the figure's title."""
    task = ["strategy=fedgems,fedavg_server_model,dsfl", "strategy.rounds=2", "seed=0,1"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    _finished(sweep, "5", ["strategy=fedgems", "strategy.rounds=3", "seed=0"], [_row(1, 0.5, 0.2, 1000, 3.0)])
    jobs = collect(sweep)
    assert [job.status for job in jobs if job.name == "5"] == ["an earlier sweep's"]
    title = figure(jobs).get_suptitle()
    assert "`strategy.rounds=2`" in table(jobs).splitlines()[0] and "all jobs: rounds=2" in title


def test_a_pipe_in_an_override_stays_inside_its_cell(tmp_path: Path) -> None:
    rows = [_row(1, 0.5, 0.5, 10, 1.0)]
    _finished(tmp_path, "0", ["strategy=fedgems", "+note=a|b", "seed=0"], rows)
    _finished(tmp_path, "1", ["strategy=fedavg", "+note=c|d", "seed=0"], rows)
    _folder(tmp_path, "2", ["strategy=dsfl", "+note=e|f", "seed=0"])
    markdown = table(collect(tmp_path))
    header = next(line for line in markdown.splitlines() if line.startswith("| setting |"))
    for line in markdown.splitlines():
        if line.startswith("| strategy="):
            assert line.replace("\\|", "").count("|") == header.count("|"), line
    missing = next(line for line in markdown.splitlines() if line.startswith("| 2 |"))
    assert missing.replace("\\|", "").count("|") == 6


def test_a_null_tier_figure_is_missing_not_a_crash_and_the_legend_says_where_seeds_are_fewer(tmp_path: Path) -> None:
    _finished(tmp_path, "0", ["strategy=fedgems", "seed=0"], [_row(1, 0.5, 0.5, 10, 1.0), _row(2, 0.6, 0.6, 10, 2.0)])
    rows = [_row(1, 0.7, 0.5, 10, 1.0), {**_row(2, 0.8, 0.6, 10, 2.0), "client_flops_low": None, "sim_seconds": None}]
    _finished(tmp_path, "1", ["strategy=fedgems", "seed=1"], rows)
    jobs = collect(tmp_path)
    assert [job.status for job in jobs] == ["finished", "finished"]
    assert jobs[1].rounds[1]["client_flops"] == pytest.approx((4 * 2e6 + 2 * 6e6) / 6)  # mid and high only
    legend = [t.get_text() for t in figure(jobs).legends[0].get_texts()]
    assert legend == ["(all jobs) (2 seeds; 1 on some panels)"]


def test_the_console_table_shows_a_figure_that_only_early_rounds_have(capsys: pytest.CaptureFixture[str]) -> None:
    from fl_kd.results import print_summary_table

    print_summary_table([{"round": 1, "server_acc": 0.5, "n_cache": 3}, {"round": 2, "server_acc": 0.6}])
    out = capsys.readouterr().out
    assert "cache" in out and "3" in out


def test_ctrl_c_in_a_sweep_ends_it_with_130_and_no_traceback(tmp_path: Path) -> None:
    result = _app(tmp_path, "-m", "+x=1,5,4", f"hydra.sweep.dir={tmp_path / 's'}")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "interrupted (Ctrl-C)" in result.stdout
    assert (tmp_path / "s" / "1").is_dir() and not (tmp_path / "s" / "2").exists()  # the sweep stopped there
