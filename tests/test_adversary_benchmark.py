"""The robustness benchmark's plan and table (no run: those take minutes)."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.robustness.grid import METHODS, Job, fits, plan
from benchmarks.robustness.report import table
from fl_kd.kd.fedavg import FedAvgConfig
from fl_kd.kd.fedgems import FedGEMSConfig


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
    assert isinstance(cfg.strategy, FedAvgConfig)
    assert cfg.strategy.name == "fedavg" and cfg.strategy.aggregation == "krum"
    assert cfg.adversary.name == "scaled_update" and cfg.adversary.fraction == 0.3 and cfg.num_clients == 20


def _weight_rule(job: Job, quick: bool = False) -> FedAvgConfig:
    from benchmarks.kd.grid import compose_config

    cfg = compose_config(0, 2, "inprocess", job.overrides(quick=quick))
    assert isinstance(cfg.strategy, FedAvgConfig)
    assert cfg.num_clients == (6 if quick else 20)
    return cfg.strategy


def test_multi_krum_is_told_the_attack_s_count_of_liars_capped_where_krum_stops_accepting_it() -> None:
    told = {fraction: _weight_rule(Job("fedavg_multi_krum", "alie", fraction, 0)) for fraction in (0.1, 0.3, 0.5)}
    assert {fraction: rule.num_malicious for fraction, rule in told.items()} == {0.1: 2, 0.3: 6, 0.5: 8}
    assert all(rule.aggregation == "multi_krum" for rule in told.values())
    assert _weight_rule(Job("fedavg_multi_krum", "none", 0.0, 0)).num_malicious == 0
    assert _weight_rule(Job("fedavg_multi_krum", "absent", 0.5, 0)).num_malicious == 0  # no liar answers
    # 3 liars of 6; Krum accepts f = 1 at most
    assert _weight_rule(Job("fedavg_multi_krum", "alie", 0.5, 0), quick=True).num_malicious == 1
    assert _weight_rule(Job("fedavg_krum", "alie", 0.5, 0)).num_malicious == 0  # the other rules keep their defaults


def test_the_variants_face_only_their_listed_attacks_and_the_attack_variants_only_them() -> None:
    from benchmarks.kd.grid import compose_config

    adversaries = ["none", "camouflage", "camouflage_p0.2", "random_logits"]
    jobs = {(j.method, j.adversary, j.fraction) for j in plan(["fedgems", "fedgems_canaries"], adversaries, [0.3], [0])}
    assert jobs == {
        ("fedgems", "none", 0.0),
        ("fedgems_canaries", "none", 0.0),
        ("fedgems", "camouflage", 0.3),
        ("fedgems", "random_logits", 0.3),
        ("fedgems_canaries", "camouflage", 0.3),
        ("fedgems_canaries", "camouflage_p0.2", 0.3),
    }
    cfg = compose_config(0, 2, "inprocess", Job("fedgems_canaries", "camouflage_p0.2", 0.3, 0).overrides())
    assert cfg.adversary.name == "camouflage" and cfg.adversary.poison_share == 0.2
    assert isinstance(cfg.strategy, FedGEMSConfig)
    assert cfg.strategy.canaries == 1000 and cfg.strategy.unlabelled_trust == "learned"
    assert cfg.transfer.unlabelled == 10000


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


def _record(method: str, adversary: str, fraction: float, acc: float, shares: tuple[float, ...] = ()) -> dict:
    rounds = [{"server_acc": 0.5, "malicious_weight_share": s} for s in shares] + [{"server_acc": acc}]
    return {"job": {"method": method, "adversary": adversary, "fraction": fraction, "seed": 0}, "rounds": rounds}


def test_the_verdicts_say_holds_or_missed_from_the_drops_and_weight_shares() -> None:
    from benchmarks.robustness.verdicts import logit_attacks, verdict_lines

    expected = "random_logits negated_logits scaled_logits confident_wrong camouflage skewed_colluders"
    assert set(logit_attacks()) == set(expected.split())
    records = [
        _record("fedgems", "none", 0.0, 0.80),
        _record("fedgems", "negated_logits", 0.3, 0.795),  # -0.5 points: holds
        _record("fedgems", "scaled_logits", 0.3, 0.75),  # -5 points: missed
        _record("fedgems", "confident_wrong", 0.3, 0.80, shares=(0.0, 0.02)),  # one round gave weight: missed
        _record("fedmd", "none", 0.0, 0.80),
        _record("fedmd", "negated_logits", 0.3, 0.70),
        _record("dsfl", "none", 0.0, 0.80),
        _record("dsfl", "negated_logits", 0.3, 0.79),
    ]
    records += [
        _record("fedgems_learned", "none", 0.0, 0.80),
        _record("fedgems_learned", "camouflage", 0.3, 0.73),
        _record("fedgems_canaries", "none", 0.0, 0.80),
        _record("fedgems_canaries", "camouflage", 0.3, 0.801),
    ]
    text = "\n".join(verdict_lines(records))
    assert "- `camouflage` at 0.3: fedgems_learned loses +7.0 points (expected <= 1): **MISSED**." in text
    assert "- `camouflage` at 0.3: fedgems_canaries loses -0.1 points (expected <= 1): **holds**." in text
    assert "`negated_logits` at 0.3: fedgems loses +0.5 points (expected <= 1): **holds**" in text
    assert "fedmd +10.0, dsfl +1.0 (not several)" in text
    assert "`scaled_logits` at 0.3: fedgems loses +5.0 points (expected <= 1): **MISSED**; plain averaging loses " \
        "fedmd not run" in text  # fmt: skip
    assert "`random_logits` at 0.3: fedgems not run." in text
    assert "`confident_wrong`, fedgems: largest share of fusion weight to malicious clients in any round 2.00% " \
        "(expected 0): **MISSED**" in text  # fmt: skip


def test_the_screen_lines_read_whom_a_screen_left_out_by_id() -> None:
    from benchmarks.robustness.verdicts import screen_lines

    def record(adversary: str, seed: int, rows: list[dict]) -> dict:
        job = {"method": "fedgems_plus_consensus", "adversary": adversary, "fraction": 0.3, "seed": seed}
        return {"job": job, "rounds": [{"server_acc": 0.8} | row for row in rows]}

    def caught(liars: int, honest: int) -> dict:
        return {"n_malicious_accepted": 6, "n_malicious_screened": liars, "n_honest_screened": honest}

    lines = screen_lines(
        [
            record("none", 0, [{"consensus_screened": 0}, {"consensus_screened": 1}]),
            record("camouflage", 0, [caught(5, 1), caught(6, 0)]),
            record("camouflage", 1, [caught(6, 0), caught(6, 0)]),
            _record("fedmd", "camouflage", 0.3, 0.7),  # no screen: no line
        ]
    )
    assert lines == [
        "- screens of fedgems_plus_consensus against `camouflage`: liars left out in the last round 6 of 6 "
        "(fraction 0.3, seed 0), 6 of 6 (fraction 0.3, seed 1); honest clients left out in any round: 1.",
        "- screens of fedgems_plus_consensus when nobody lies: the most clients left out of a round: 1.",
    ]


def test_the_honest_clients_alone_are_a_reference_run_only_beside_the_screened_variant_and_the_weight_rules() -> None:
    jobs = plan(["fedgems", "fedgems_plus_consensus_confidence"], ["absent", "camouflage"], [0.3, 0.5], [0])
    pairs = {(j.method, j.adversary, j.fraction) for j in jobs if j.adversary != "none"}
    assert pairs == {
        ("fedgems", "camouflage", 0.3),
        ("fedgems", "camouflage", 0.5),
        ("fedgems_plus_consensus_confidence", "camouflage", 0.3),
        ("fedgems_plus_consensus_confidence", "camouflage", 0.5),
        ("fedgems_plus_consensus_confidence", "absent", 0.3),
        ("fedgems_plus_consensus_confidence", "absent", 0.5),
    }
    weights = plan(["fedavg_median", "fedavg_fltrust", "feddf"], ["absent", "alie"], [0.3], [0])
    assert {(j.method, j.adversary) for j in weights if j.adversary != "none"} == {
        ("fedavg_median", "absent"),
        ("fedavg_median", "alie"),
        ("fedavg_fltrust", "absent"),
        ("fedavg_fltrust", "alie"),
        ("feddf", "alie"),
    }


def test_the_reference_lines_measure_attacks_from_the_honest_clients_alone() -> None:
    from benchmarks.robustness.verdicts import reference_lines, screen_lines, verdict_lines

    method = "fedgems_plus_consensus_confidence"

    def record(adversary: str, fraction: float, seed: int, acc: float) -> dict:
        row = {"server_acc": acc, "n_malicious_accepted": 0, "n_malicious_screened": 0, "n_honest_screened": 0}
        return {"job": {"method": method, "adversary": adversary, "fraction": fraction, "seed": seed}, "rounds": [row]}

    records = [
        record("none", 0.0, 0, 0.83),
        record("none", 0.0, 1, 0.82),
        record("absent", 0.5, 0, 0.81),
        record("absent", 0.5, 1, 0.80),
        record("camouflage", 0.5, 0, 0.805),
        record("camouflage", 0.5, 1, 0.80),
        record("absent", 0.3, 0, 0.825),
        record("camouflage", 0.3, 0, 0.82),
        record("absent", 0.5, 2, 0.79),  # a third reference seed, which no attack ran
    ]
    assert reference_lines(records) == [
        f"- {method} at fraction 0.3, its honest clients alone (`absent`): 82.50% (1 seed(s)), +0.5 points under the "
        "honest run of all clients; each attack's run below it: `camouflage` +0.5.",
        f"- {method} at fraction 0.5, its honest clients alone (`absent`): 80.00% (3 seed(s)), +2.0 points under the "
        "honest run of all clients; each attack's run below it: `camouflage` +0.3 (2 seed(s)).",
    ]
    assert not any("absent" in line for line in screen_lines(records))  # its liars never reach the screen
    assert not any("`absent` at 0.3" in line for line in verdict_lines(records))  # a reference, not an attack


def test_the_section_lists_what_did_not_finish_and_the_command_drops_report_only_flags() -> None:
    from benchmarks.robustness.__main__ import printed_command
    from benchmarks.robustness.report import BEGIN, END, section

    text = section([_record("fedgems", "none", 0.0, 0.8)], "`cmd`", "Cut: 3 rounds.", ["fedmd__none__0__seed0"], [])
    assert text.startswith(BEGIN) and text.endswith(END) and "Cut: 3 rounds." in text
    assert "- not run (time): `fedmd__none__0__seed0`" in text and "| fedgems | none | 0 | 1 | 80.0 |" in text
    argv = ["--rounds", "3", "--report-only", "--note", "load 2", "--methods", "fedgems", "--note=x"]
    assert printed_command(argv) == "python -m benchmarks.robustness --rounds 3 --methods fedgems"


def test_the_preset_methods_compose_and_face_the_attacker_that_knows_their_screen() -> None:
    from benchmarks.kd.grid import compose_config

    jobs = plan(["fedgems_plus_consensus"], ["none", "camouflage_consistent_p0.2", "random_logits"], [0.3], [0])
    assert [(j.adversary, j.fraction) for j in jobs] == [("none", 0.0), ("camouflage_consistent_p0.2", 0.3)]
    cfg = compose_config(0, 2, "inprocess", jobs[1].overrides())
    assert isinstance(cfg.strategy, FedGEMSConfig)
    assert cfg.strategy.name == "fedgems" and cfg.strategy.consensus_z == 3.0 and cfg.strategy.unlabelled_cache == 3
    assert cfg.adversary.checked == "poisoned" and cfg.adversary.poison_share == 0.2


def test_the_twice_canaries_the_floored_burst_and_the_trimmed_screen_compose_with_their_settings() -> None:
    from benchmarks.kd.grid import compose_config

    jobs = plan(
        ["fedgems_canaries2000_burst", "fedgems_robust_burst", "fedgems_plus_consensus_trimmed"],
        ["none", "camouflage_mimic_p0.2_from3", "camouflage_mimic_p0.05"],
        [0.3],
        [0],
    )
    assert {(j.method, j.adversary) for j in jobs} == {
        ("fedgems_canaries2000_burst", "none"),
        ("fedgems_robust_burst", "none"),
        ("fedgems_plus_consensus_trimmed", "none"),
        ("fedgems_canaries2000_burst", "camouflage_mimic_p0.2_from3"),
        ("fedgems_robust_burst", "camouflage_mimic_p0.2_from3"),
        ("fedgems_plus_consensus_trimmed", "camouflage_mimic_p0.2_from3"),
        ("fedgems_plus_consensus_trimmed", "camouflage_mimic_p0.05"),
    }
    canaries, floored, trimmed = (
        compose_config(0, 3, "inprocess", Job(method, "camouflage_mimic_p0.2_from3", 0.3, 0).overrides()).strategy
        for method in ("fedgems_canaries2000_burst", "fedgems_robust_burst", "fedgems_plus_consensus_trimmed")
    )
    assert isinstance(canaries, FedGEMSConfig) and isinstance(floored, FedGEMSConfig)
    assert isinstance(trimmed, FedGEMSConfig)
    assert canaries.canaries == 2000 and canaries.canary_burst_z == 2.5 and canaries.learned_prob_floor == 0
    assert floored.canaries == 1000 and floored.canary_burst_z == 2.5 and floored.learned_prob_floor == 0.01
    assert trimmed.consensus_z == 3.0 and trimmed.learned_prob_floor == 0.01 and trimmed.learned_trim == 3
    assert trimmed.canaries == 0 and trimmed.unlabelled_cache == 3 and not trimmed.consensus_confidence
    both = compose_config(
        0,
        3,
        "inprocess",
        Job("fedgems_plus_consensus_confidence_trimmed", "camouflage_mimic_p0.05", 0.3, 0).overrides(),
    ).strategy
    assert isinstance(both, FedGEMSConfig) and both.consensus_confidence
    assert both.learned_prob_floor == 0.01 and both.learned_trim == 3 and both.consensus_z == 3.0


def test_the_screened_preset_is_what_the_grid_runs_behind_the_screen_and_its_confidence_test() -> None:
    """``strategy=fedgems_plus_screened`` is the grid's ``fedgems_plus_consensus_raise`` and, on the knowledge
    benchmark's data, its extra ``fedgems_screened_raise``: the runs that measured the preset."""
    from benchmarks.kd.grid import compose_config
    from benchmarks.knowledge.grid import EXTRAS
    from fl_kd.kd.fedgems.extensions import SCREEN

    def as_preset(overrides: list[str]) -> list[str]:
        return [o for o in overrides if not o.startswith("strategy")] + ["strategy=fedgems_plus_screened"]

    grid = Job("fedgems_plus_consensus_raise", "camouflage_mimic_skewed", 0.3, 0).overrides()
    assert compose_config(0, 3, "inprocess", as_preset(grid)) == compose_config(0, 3, "inprocess", grid)
    extra = list(next(e for e in EXTRAS if e.method == "fedgems_screened_raise").jobs()[0].hydra_overrides())
    assert compose_config(0, 8, "inprocess", as_preset(extra)) == compose_config(0, 8, "inprocess", extra)
    screened = compose_config(0, 3, "inprocess", as_preset(grid)).strategy
    plus = compose_config(0, 3, "inprocess", [*as_preset(grid)[:-1], "strategy=fedgems_plus"]).strategy
    assert plus != screened and dataclasses.replace(plus, **SCREEN) == screened  # fedgems_plus and the screen
