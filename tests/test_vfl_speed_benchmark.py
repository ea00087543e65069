"""The VFL speed benchmark's section: ratio per pair, agreement of the backends, its own block of the report."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import kept_sections, write_section
from benchmarks.vfl.speed import BEGIN, END, ISSUE_OVERRIDES, Run, parse_args, render


def _run(backend: str, seconds: float, mp: float = 0.7445, loss: float = 0.86) -> Run:
    return Run(backend, [seconds], mp, [loss], 163 if backend == "flwr_run" else None, 1.5, Path("run"))


def test_the_section_gives_each_pair_its_ratio_and_flags_a_disagreement() -> None:
    pairs = [
        {"inprocess": _run("inprocess", 1.0), "flwr_run": _run("flwr_run", 1.5)},
        {"inprocess": _run("inprocess", 1.0), "flwr_run": _run("flwr_run", 3.0, mp=0.75)},
        {"inprocess": _run("inprocess", 2.0), "flwr_run": _run("flwr_run", 3.0)},
    ]
    section = render(pairs, "python -m benchmarks.vfl.speed", ISSUE_OVERRIDES, "now")
    assert section.startswith(BEGIN) and section.rstrip().endswith(END)
    assert "| 1 | 1.00 | 1.50 | 1.50 | 3.1 | yes |" in section  # 0.5 s over 163 exchanges
    assert "| 2 | 1.00 | 3.00 | 3.00 | 12.3 | **no** |" in section
    assert "Median ratio **1.50x**: meets the goal of at most 2x." in section
    assert "`fl-kd-vfl dataset=fashion_mnist training.epochs=1 'attack=[]'`" in section


def test_the_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Vertical FL\n\nthe defences' tables\n")
    pairs = [{"inprocess": _run("inprocess", 1.0), "flwr_run": _run("flwr_run", 5.0)}]
    write_section(report, render(pairs, "first", ISSUE_OVERRIDES, "then"))
    write_section(report, render(pairs, "second", ISSUE_OVERRIDES, "now"))
    text = report.read_text()
    assert text.startswith("# Vertical FL\n\nthe defences' tables\n")
    assert text.count(BEGIN) == 1 and "second" in text and "first" not in text
    assert "misses the goal" in text
    assert kept_sections(text) == [text[text.index(BEGIN) : text.index(END) + len(END)]]


def test_the_default_job_is_the_issues_command() -> None:
    args = parse_args([])
    assert args.override == ["dataset=fashion_mnist", "training.epochs=1", "attack=[]"]
    assert args.repeats >= 1


def test_the_transport_floor_section_says_whether_the_goal_is_below_the_floor() -> None:
    from benchmarks.vfl import transport

    args = transport.parse_args(["--exchanges", "4", "--batches", "10"])
    # 3 ms a round trip, 20 exchanges an epoch: 0.06 s of transport. Against 0.03 s in-process the least ratio is 3x.
    section = transport.render([0.002, 0.003, 0.003, 0.004], [0.03, 0.06], args, "cmd", "now")
    assert section.startswith(transport.BEGIN) and section.rstrip().endswith(transport.END)
    assert "median **3.0 ms** per exchange" in section and "at least 0.06 s of transport" in section
    assert "| 1 | 0.03 | 0.06 | 3.0x |" in section and "| 2 | 0.06 | 0.06 | 2.0x |" in section
    assert "at least **2.0x** the in-process one" not in section  # 2.0x is not above the goal
    assert "leaves room for the goal of 2x (at least 2.0x)" in section
    above = transport.render([0.003] * 4, [0.03], args, "cmd", "now")
    assert "at least **3.0x** the in-process one, above the goal of 2x" in above
