"""The robustness benchmark's plan and table (no run: those take minutes)."""

from __future__ import annotations

import pytest

from benchmarks.robustness.grid import METHODS, Job, fits, plan
from benchmarks.robustness.report import table


def test_the_plan_pairs_each_method_only_with_attacks_its_clients_can_make() -> None:
    jobs = plan(["fedgems", "fedavg_krum"], ["none", "negated_logits", "sign_flip", "targeted"], [0.3], [0, 1])
    names = [(job.method, job.adversary, job.seed) for job in jobs]
    assert names[:2] == [("fedgems", "none", 0), ("fedavg_krum", "none", 0)]  # honest runs first, seed by seed
    assert ("fedgems", "negated_logits", 0) in names and ("fedavg_krum", "negated_logits", 0) not in names
    assert ("fedavg_krum", "sign_flip", 1) in names and ("fedgems", "sign_flip", 1) not in names
    assert {("fedgems", "targeted"), ("fedavg_krum", "targeted")} <= {(m, a) for m, a, _ in names}
    assert len(jobs) == 2 * (2 + 4)
    assert all(fits(method, "label_flip") for method in METHODS)
    with pytest.raises(ValueError, match="nosuch"):
        plan(["nosuch"], ["none"], [0.3], [0])


def test_a_job_composes_to_a_valid_config() -> None:
    from benchmarks.kd.grid import compose_config

    cfg = compose_config(0, 2, "inprocess", Job("fedavg_krum", "scaled_update", 0.3, 0).overrides())
    assert cfg.strategy.name == "fedavg" and cfg.strategy.aggregation == "krum"
    assert cfg.adversary.name == "scaled_update" and cfg.adversary.fraction == 0.3 and cfg.num_clients == 20


def test_the_table_reports_the_drop_from_the_honest_run_of_the_same_seed() -> None:
    def record(adversary: str, fraction: float, seed: int, acc: float, share: float | None = None) -> dict:
        row = {"server_acc": acc} | ({} if share is None else {"malicious_weight_share": share})
        return {"job": {"method": "fedmd", "adversary": adversary, "fraction": fraction, "seed": seed}, "rounds": [row]}

    text = table(
        [
            record("none", 0, 0, 0.8),
            record("none", 0, 1, 0.7),
            record("negated_logits", 0.3, 0, 0.6, 0.3),
            record("negated_logits", 0.3, 1, 0.6, 0.3),
        ]
    )
    row = next(line for line in text.splitlines() if "negated_logits" in line)
    assert "| 60.0 ± 0.0 | 15.0 ± 7.1 | 30.00 ± 0.00 | - |" in row
