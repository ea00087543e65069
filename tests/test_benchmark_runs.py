"""How the long benchmarks treat what they already ran: a killed benchmark leaves no worker behind, a rerun never
overwrites finished jobs of another run, and the committed report is only written when asked for."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks.common import REPO_ROOT, code_digest
from benchmarks.knowledge import __main__ as knowledge
from benchmarks.knowledge.grid import federated
from benchmarks.knowledge.run import result_path
from benchmarks.robustness import __main__ as robustness
from benchmarks.robustness.grid import Job, plan
from benchmarks.robustness.run import RESULT_FILE, conflicts, other_code, read_result
from fl_kd.simulations.processes import identify, is_running

WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from benchmarks.common import job_pool

    def work(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    if __name__ == "__main__":
        pool = job_pool(1)
        pool.submit(work, sys.argv[1])
        time.sleep(120)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_benchmark_killed_by_sigkill_leaves_no_worker_running(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "bench.py", tmp_path / "worker.pid"
    script.write_text(WORKER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 90
        while not pid_file.exists() and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
        assert pid_file.exists(), "the worker never started"
        worker = identify(int(pid_file.read_text()))
        assert worker is not None and is_running(worker)
        parent.kill()  # no handler, no finally: only the kernel can tell the worker
        parent.wait()
        deadline = time.monotonic() + 20
        while is_running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not is_running(worker), "the worker outlived the benchmark"
    finally:
        parent.kill()
        if pid_file.exists() and (left := identify(int(pid_file.read_text()))) is not None and is_running(left):
            os.kill(left.pid, signal.SIGKILL)


HONEST_FEDMD = plan(["fedmd"], ["none"], [0.3], [0])[0]


def _robustness_result(
    out: Path, job: Job, rounds: int, overrides: list[str] | None = None, code: str | None = None
) -> Path:
    path = out / job.name / RESULT_FILE
    path.parent.mkdir(parents=True)
    record = {"rounds": [{"round": r + 1} for r in range(rounds)], "quick": False, "seconds": 1.0, "job": {}}
    if overrides is not None:
        record["overrides"] = overrides
    if code is not None:
        record["code"] = code
    path.write_text(json.dumps(record))
    return path


def test_the_robustness_benchmark_refuses_to_overwrite_finished_jobs_of_another_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = HONEST_FEDMD
    path = _robustness_result(tmp_path, job, 3)
    before = path.read_text()
    code = robustness.main(["--methods", "fedmd", "--adversaries", "none", "--fractions", "0.3", "--rounds", "5",
                            "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and path.read_text() == before
    assert "fedmd__none__0__seed0 (3 rounds)" in capsys.readouterr().err
    assert conflicts(tmp_path, [job], 3, quick=True) == ["fedmd__none__0__seed0 (not --quick)"]
    assert conflicts(tmp_path, [job], 3, quick=False) == [] and read_result(tmp_path, job, 3) is not None


def test_a_robustness_result_of_other_settings_is_another_run(tmp_path: Path) -> None:
    job = HONEST_FEDMD
    _robustness_result(tmp_path, job, 3, overrides=[*job.overrides(), "strategy.public_per_round=10"])
    assert conflicts(tmp_path, [job], 3, quick=False) == ["fedmd__none__0__seed0 (other settings)"]
    assert read_result(tmp_path, job, 3) is None
    other = tmp_path / "same"
    _robustness_result(other, job, 3, overrides=job.overrides())
    assert read_result(other, job, 3) is not None


def test_the_robustness_benchmark_counts_no_job_of_other_code_as_done_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = HONEST_FEDMD
    path = _robustness_result(tmp_path, job, 3, overrides=job.overrides(), code="0123456789ab")
    args = [
        "--methods",
        "fedmd",
        "--adversaries",
        "none",
        "--fractions",
        "0.3",
        "--rounds",
        "3",
        "--out",
        str(tmp_path),
    ]
    assert robustness.main(args) == 2
    assert "fedmd__none__0__seed0 (0123456789ab)" in capsys.readouterr().err
    assert other_code(tmp_path, [job], "0123456789ab") == []
    path.write_text(path.read_text().replace("0123456789ab", code_digest()))
    assert other_code(tmp_path, [job], code_digest()) == []  # this checkout's: done, nothing to run
    other = next(j for j in plan(["fedmd"], ["none"], [0.3], [1]) if j.seed == 1)
    _robustness_result(tmp_path, other, 3, overrides=other.overrides(), code="0123456789ab")
    assert robustness.main([*args, "--seeds", "0", "1", "--report-only"]) == 2  # a report of two codes
    assert "more than one code" in capsys.readouterr().err


def test_the_robustness_report_goes_to_the_committed_file_only_when_asked(tmp_path: Path) -> None:
    args = ["--methods", "fedmd", "--adversaries", "none", "--fractions", "0.3", "--rounds", "3"]
    committed = tmp_path / "committed.md"
    committed.write_text("# kept\n")
    assert robustness.main([*args, "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "report.md").is_file() and committed.read_text() == "# kept\n"
    assert robustness.main([*args, "--out", str(tmp_path), "--report-only", "--report", str(committed)]) == 0
    assert "<!-- robustness-benchmark:begin -->" in committed.read_text()


def test_the_knowledge_benchmark_refuses_a_folder_of_another_number_of_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = result_path(tmp_path, federated("fedgems", "alpha0.5", 0))
    path.parent.mkdir(parents=True)
    record = {"config": {"strategy": {"rounds": 8}}, "rounds": [], "seconds": 1.0, "code": code_digest()}
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        knowledge.parse_args(["--rounds", "10", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "alpha0.5/fedgems/seed0 (8 rounds)" in capsys.readouterr().err
    args = knowledge.parse_args(["--rounds", "8", "--out", str(tmp_path)])
    assert args.report == tmp_path.resolve() / "report.md"  # not BENCHMARKS_KD.md unless asked


def test_the_knowledge_benchmark_refuses_to_join_jobs_of_other_code_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's name and overrides do not change with the code: without its digest an edit's figures would sit
    beside the old code's as one table."""
    for seed, code in ((0, "0123456789ab"), (1, None)):
        path = result_path(tmp_path, federated("fedgems", "alpha0.5", seed))
        path.parent.mkdir(parents=True)
        record = {"config": {"strategy": {"rounds": 8}}, "rounds": [], "seconds": 1.0}
        path.write_text(json.dumps(record | ({"code": code} if code else {})))
    with pytest.raises(SystemExit) as exit_info:
        knowledge.parse_args(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "0123456789ab: alpha0.5/fedgems/seed0" in error and "not recorded: alpha0.5/fedgems/seed1" in error
    assert f"{code_digest()}: this checkout, no job yet" in error
    assert knowledge.parse_args(["--out", str(tmp_path), "--keep-other-code"]).keep_other_code
    # A record of other settings than the job's is rerun, not reported: its code joins nothing.
    stale = {"config": {"strategy": {"rounds": 8}}, "rounds": [], "seconds": 1.0, "overrides": ["strategy=fedgems"]}
    (tmp_path / "alpha0.5" / "fedgems" / "seed1" / "result.json").write_text(json.dumps(stale | {"code": "ffff"}))
    assert knowledge.parse_args(["--out", str(tmp_path), "--report-only"])  # one code: the report is that code's
    with pytest.raises(SystemExit):
        knowledge.parse_args(["--out", str(tmp_path)])  # running would add this checkout's jobs to it


def test_a_code_digest_changes_with_the_code_and_not_with_results_or_caches(tmp_path: Path) -> None:
    (tmp_path / "fl_kd" / "__pycache__").mkdir(parents=True)
    (tmp_path / "fl_kd" / "core.py").write_text("x = 1\n")
    before = code_digest(tmp_path, ["fl_kd", "benchmarks"])
    (tmp_path / "fl_kd" / "__pycache__" / "core.yaml").write_text("cached: true\n")
    (tmp_path / "benchmarks" / "results" / "run").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "run" / "config.yaml").write_text("seed: 0\n")
    assert code_digest(tmp_path, ["fl_kd", "benchmarks"]) == before
    (tmp_path / "fl_kd" / "core.py").write_text("x = 2\n")
    assert code_digest(tmp_path, ["fl_kd", "benchmarks"]) != before


@pytest.mark.parametrize("entry", ["benchmarks.kd", "benchmarks.robustness", "benchmarks.vfl"])
def test_a_seed_given_twice_is_refused(entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It ran one job twice (two workers writing one folder) and reported it as two seeds with no spread."""
    module = importlib.import_module(f"{entry}.__main__")
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--seeds", "0", "1", "0"])
    assert exit_info.value.code == 2
    assert "--seeds must be distinct, got [0, 1, 0] ([0] twice)" in capsys.readouterr().err


def test_the_vfl_benchmarks_quick_run_keeps_the_seeds_typed() -> None:
    from benchmarks.vfl.__main__ import parse_args

    assert parse_args(["--quick"]).seeds == [0] and parse_args([]).seeds == [0, 1, 2]
    assert parse_args(["--quick", "--seeds", "0", "1", "2"]).seeds == [0, 1, 2]  # was cut to seed 0 unsaid


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--report-only"], "holds no finished job to report"),  # was a FileNotFoundError traceback
        (["--only", "alpha0.5/fedgems", "typo"], "--only typo: no job's name contains it"),  # ran nothing, exit 0
    ],
)
def test_the_knowledge_benchmark_refuses_a_command_that_would_do_nothing(
    tmp_path: Path, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        knowledge.parse_args([*argv, "--out", str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and said in capsys.readouterr().err
    assert knowledge.parse_args(["--only", "alpha0.5/fedgems", "--out", str(tmp_path)]).only == ["alpha0.5/fedgems"]


@pytest.mark.parametrize(
    ("entry", "argv", "said"),
    [
        ("benchmarks.kd", ["--seeds", "-1", "--rounds", "1"], "error: seed must be in [0, 4294967295], got -1"),
        ("benchmarks.kd", ["--override", "strategy.server_lr=abc"], "error: strategy.server_lr must be a number"),
        (
            "benchmarks.vfl",
            ["--quick", "--noise-scales", "-1"],
            "error: defence.params: noise scale must be non-negative",
        ),
        ("benchmarks.vfl", ["--quick", "--threads", "0"], "--threads must be at least 1, got 0"),
        ("benchmarks.device_check", ["--device", "gpu"], "--device gpu is no torch device"),
    ],
)
def test_a_benchmarks_bad_argument_is_one_line_and_exit_2(
    entry: str, argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They ended in a ConfigError's or torch's traceback, where fl-kd-sim gives one line for the same input."""
    module = importlib.import_module(entry if entry.endswith("device_check") else f"{entry}.__main__")
    with pytest.raises(SystemExit) as exit_info:
        module.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and said in capsys.readouterr().err
