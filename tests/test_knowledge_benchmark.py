"""The knowledge benchmark's plan, resumption and report (its runs are long; these check the bookkeeping)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.knowledge.grid import (
    COSTLY_PEER,
    PEERS,
    SETTINGS,
    Job,
    choose_best_peer,
    federated,
    plan,
    variant_jobs,
)
from benchmarks.knowledge.report import BEGIN, END, write_report
from benchmarks.knowledge.run import read_result, result_path
from benchmarks.knowledge.verdicts import Figures
from fl_kd.kd.dsfl import DSFLConfig


def test_plan_puts_seed0_first_and_adds_the_best_peers_seeds_once_known() -> None:
    jobs = plan({})
    assert len(jobs) == len(set(jobs))
    first_extra = next(i for i, job in enumerate(jobs) if job.seed > 0)
    assert all(job.seed == 0 for job in jobs[:first_extra])
    cheap = [peer for peer in PEERS if peer != COSTLY_PEER]
    assert {federated(peer, s, 0) for peer in cheap for s in SETTINGS} <= set(jobs[:first_extra])
    assert jobs[-1].kind == "ceiling" and jobs[-2] == federated(COSTLY_PEER, "pathological", 0)
    with_best = plan({"alpha0.1": "dsfl"})
    extra = [federated("dsfl", "alpha0.1", 1), federated("dsfl", "alpha0.1", 2)]
    at = with_best.index(extra[0])
    assert with_best[at : at + 2] == extra and extra[0] not in jobs
    # The personal-model variants get seeds 1-2 in every setting, after the best peers' and before FedAvg's runs.
    methods = ("fedgems+personal", "fedgems+ditto", "fedgems+prior")
    personal = [job for job in with_best[at + 2 :] if job.method in methods]
    expected = {(m, s, seed) for m in methods for s in SETTINGS for seed in (1, 2)}
    assert {(job.method, job.setting, job.seed) for job in personal} == expected
    assert with_best.index(personal[-1]) < with_best.index(federated(COSTLY_PEER, "alpha0.5", 0))
    assert len({job.name for job in with_best}) == len(with_best)


def test_best_peer_ignores_peers_without_a_server_model() -> None:
    assert choose_best_peer({"fedmd": math.nan, "dsfl": 0.7, "feddf": 0.72}) == "feddf"
    assert choose_best_peer({"fedmd": math.nan}) is None


def _row(round: int, server: float, client: float, **extra: Any) -> dict[str, Any]:
    tiers = {f"client_{k}_{t}_mean": client for k in ("acc", "pacc") for t in ("low", "mid", "high")}
    return {"round": round, "server_acc": server, "client_acc_mean": client, "client_pacc_mean": client,
            "uplink_bytes": 20 * 50_000, "downlink_bytes": 20 * 30_000, **tiers, **extra}  # fmt: skip


def _write(
    out: Path, job: Job, rows: list[dict[str, Any]], low_model: str = "cnn_tiny", code: str | None = None
) -> None:
    config = {
        "num_clients": 20,
        "strategy": {"fraction_fit": 1.0, "unlabelled_trust": "class_reliability", "unlabelled_per_round": 1000},
        "transfer": {"labelled": 1000, "unlabelled": 10000},
        "device_profile": {"server_model": "cnn_server", "tiers": {"low": {"model": low_model, "share": 0.4}}},
    }
    path = result_path(out, job)
    path.parent.mkdir(parents=True)
    record = {"job": {"method": job.method, "seed": job.seed}, "rounds": rows, "config": config, "seconds": 60.0}
    path.write_text(json.dumps(record | ({"code": code} if code else {})))


def test_fedavg_of_the_server_model_is_not_waited_for_but_competes_once_finished(tmp_path: Path) -> None:
    from benchmarks.knowledge.__main__ import best_peers, reported_jobs

    cheap = [peer for peer in PEERS if peer != COSTLY_PEER]
    for index, peer in enumerate(cheap[:-1]):
        _write(tmp_path, federated(peer, "alpha0.5", 0), [_row(1, 0.5 + 0.01 * index, 0.5)])
    assert best_peers(tmp_path) == {}  # one cheap peer has not finished
    _write(tmp_path, federated(cheap[-1], "alpha0.5", 0), [_row(1, 0.7, 0.5)])
    assert best_peers(tmp_path) == {"alpha0.5": cheap[-1]}
    _write(tmp_path, federated(cheap[-1], "alpha0.5", 1), [_row(1, 0.7, 0.5)])  # an extra seed of that best peer
    _write(tmp_path, federated(COSTLY_PEER, "alpha0.5", 0), [_row(1, 0.8, 0.5)])
    assert best_peers(tmp_path) == {"alpha0.5": COSTLY_PEER}
    # The earlier best peer's extra seed is no longer planned, but it is still reported.
    assert federated(cheap[-1], "alpha0.5", 1) not in plan(best_peers(tmp_path))
    assert federated(cheap[-1], "alpha0.5", 1) in reported_jobs(tmp_path)
    assert federated(cheap[-1], "alpha0.5", 2) not in reported_jobs(tmp_path)  # not run: not reported twice


def test_report_section_has_the_figures_and_honest_verdicts(tmp_path: Path) -> None:
    ours = federated("fedgems", "alpha0.5", 0)
    # Best round 2 then a fall of 3 points: the fall verdict must say MISSED.
    _write(tmp_path, ours, [_row(1, 0.70, 0.6, n_clients=300, n_dark=200, n_unlabelled=500),
                            _row(2, 0.83, 0.8, n_clients=100), _row(3, 0.80, 0.8)])  # fmt: skip
    others = [
        Job("transfer_only", "transfer_only", "any", 0),
        federated("dsfl", "alpha0.5", 0),
        Job("local_only", "local_only", "alpha0.5", 0),
    ]
    for job, row in zip(others, [_row(3, 0.72, math.nan), _row(3, 0.79, 0.7), _row(3, math.nan, 0.74)], strict=True):
        _write(tmp_path, job, [row])
    # The personal-copy variant: clients 0.75, one point above local-only's 0.74 on both tests.
    personal = next(job for job in variant_jobs() if job.method == "fedgems+personal" and job.setting == "alpha0.5")
    _write(tmp_path, personal, [_row(3, 0.80, 0.75)])
    assert read_result(tmp_path, ours) is not None and read_result(tmp_path, federated("feddf", "alpha0.5", 0)) is None
    report = tmp_path / "REPORT.md"
    report.write_text(f"# Top\n\n{BEGIN}\nold\n{END}\n\n## Kept\n")
    jobs = [ours, *others, personal, federated("feddf", "alpha0.5", 0)]
    write_report(tmp_path, report, 3, "python -m benchmarks.knowledge", jobs, ["x: boom"])
    text = report.read_text()
    assert text.startswith("# Top") and text.rstrip().endswith("## Kept") and "\nold\n" not in text
    assert "5 of 6 jobs finished" in text and "not run (time): `alpha0.5/feddf/seed0`" in text
    assert "failed: x: boom" in text
    assert "+8.0 points (expected >= +5; seeds [0]): **holds**" in text  # 0.80 vs 0.72
    assert "dsfl 0.7900 (server, 1 seed(s), +1.0)" in text and "every peer by >= 2 points: **MISSED**" in text
    assert "fall after the best round <= 1 point: **MISSED** (largest 3.0 points" in text
    assert "above local-only by >= 5 points (global test; seeds [0]): **holds**" in text  # 0.80 vs 0.74
    with_personal = "- alpha0.5 with `fedgems+personal` (1 seed(s)): every tier above local-only by >= "
    assert with_personal + "5 points (global test; seeds [0]): **MISSED** (low 0.7500 vs 0.7400 (+1.0)" in text
    assert with_personal + "2 points (own test; seeds [0]): **MISSED**" in text
    assert "| fedgems+personal | 1 |" in text
    # Round 1 of the per-round table: (300 + 200 + 500) of 1,000 labelled + 1,000 unlabelled came from clients.
    assert "| 1 | 0.7000 |" in text and "| 0.50 | 50.0 | 30.0 |" in text
    assert f"{Figures(tmp_path).server_model_nbytes / 1000 / 50:.1f}x" in text
    # Rewriting replaces the section instead of adding a second one.
    write_report(tmp_path, report, 3, "python -m benchmarks.knowledge", jobs, [])
    assert report.read_text().count(BEGIN) == 1


def test_the_server_is_set_against_transfer_only_on_the_seeds_both_finished(tmp_path: Path) -> None:
    """FedGEMS' seed 1 finished before transfer-only's (the plan's order, a budget cut): its 0.90 is left out."""
    from benchmarks.knowledge.verdicts import verdict_lines

    for seed, server in ((0, 0.80), (1, 0.90)):
        _write(tmp_path, federated("fedgems", "alpha0.5", seed), [_row(3, server, 0.8)])
    _write(tmp_path, Job("transfer_only", "transfer_only", "any", 0), [_row(3, 0.78, math.nan)])
    jobs = [federated("fedgems", "alpha0.5", s) for s in (0, 1)] + [Job("transfer_only", "transfer_only", "any", 0)]
    done = {job: record for job in jobs if (record := read_result(tmp_path, job)) is not None}
    text = "\n".join(verdict_lines(done, Figures(tmp_path)))
    assert (
        "- alpha0.5: server 0.8000 vs transfer-only 0.7800: +2.0 points (expected >= +5; seeds [0]): **MISSED**" in text
    )
    assert "over 2 of 2 seed(s)" in text  # FedGEMS' own figures still read every seed it finished


def test_the_fall_after_the_best_round_is_read_on_the_subset_when_the_last_round_has_it(tmp_path: Path) -> None:
    ours = federated("fedgems", "alpha0.5", 0)
    # Best 0.87 in round 2 on the subset; round 3 scores 0.855 on the whole set but 0.868 on the subset.
    rows = [_row(1, 0.80, 0.7), _row(2, 0.87, 0.7), _row(3, 0.855, 0.7, server_acc_subset=0.868)]
    _write(tmp_path, ours, rows)
    figures = Figures(tmp_path).run_figures(json.loads(result_path(tmp_path, ours).read_text()))
    assert figures["server_final"] == 0.855 and figures["server_best"] == 0.87
    assert figures["drop_after_best"] == pytest.approx(0.002)
    # A run before the subset figure existed reads its last round on the whole set, as before.
    del rows[-1]["server_acc_subset"]
    assert Figures(tmp_path).run_figures({"rounds": rows})["drop_after_best"] == pytest.approx(0.015)


def test_a_client_margin_that_local_only_leaves_no_room_for_says_how_much_is_possible(tmp_path: Path) -> None:
    ours, local = federated("fedgems", "alpha0.5", 0), Job("local_only", "local_only", "alpha0.5", 0)
    _write(tmp_path, ours, [_row(1, 0.8, 0.995)])
    global_acc = {f"client_acc_{t}_mean": 0.5 for t in ("low", "mid", "high")}
    _write(tmp_path, local, [_row(1, math.nan, 0.99, **global_acc)])  # own: 0.99 + 2 points is above 1.0
    report = tmp_path / "REPORT.md"
    write_report(tmp_path, report, 1, "python -m benchmarks.knowledge", [ours, local], [])
    own = next(line for line in report.read_text().splitlines() if "(own test" in line and "- alpha0.5:" in line)
    assert "**MISSED**" in own and "low 0.9950 vs 0.9900 (+0.5; at most +1.0 possible)" in own
    glob = next(line for line in report.read_text().splitlines() if "(global test" in line and "- alpha0.5:" in line)
    assert "**holds**" in glob and "low 0.9950 vs 0.5000 (+49.5);" in glob  # 0.5 leaves room: no remark


def test_sections_written_by_other_commands_are_found_for_keeping() -> None:
    from benchmarks.common import kept_sections

    text = f"# KD\n\ntable\n\n{BEGIN}\nours\n{END}\n\n<!-- start-up:begin -->\nS\n<!-- start-up:end -->\ntail"
    assert kept_sections(text) == [f"{BEGIN}\nours\n{END}", "<!-- start-up:begin -->\nS\n<!-- start-up:end -->"]
    assert kept_sections("<!-- a:begin -->\nno end") == []


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    from benchmarks.common import write_section

    report = tmp_path / "R.md"
    report.write_text("# R\n\n<!-- a:begin -->\nA1\n<!-- a:end -->\n\n<!-- b:begin -->\nB\n<!-- b:end -->\n")
    write_section(report, "<!-- a:begin -->\nA2\n<!-- a:end -->")
    write_section(report, "<!-- c:begin -->\nC\n<!-- c:end -->\n")
    text = report.read_text()
    assert "A1" not in text and text.count("<!-- a:begin -->") == 1 and "\nB\n" in text
    assert text.index("A2") < text.index("\nB\n") < text.index("\nC\n")
    with pytest.raises(ValueError, match="begin"):
        write_section(report, "no markers")


def test_a_result_run_with_other_settings_than_the_job_now_has_counts_as_not_run(tmp_path: Path) -> None:
    """After the grid changes (FedGEMS gained an extension), an old record is not taken for the new job."""
    from benchmarks.knowledge.grid import BASE_OVERRIDES, FEDGEMS_OVERRIDES, resolved

    job = federated("fedgems", "alpha0.5", 0)
    path = result_path(tmp_path, job)
    path.parent.mkdir(parents=True)
    old = Job("fedgems", "federated", "alpha0.5", 0, BASE_OVERRIDES)
    path.write_text(json.dumps({"overrides": old.hydra_overrides(), "rounds": [], "seconds": 1.0}))
    assert read_result(tmp_path, job) is None
    # The same settings reached by another order of overrides (a variant that repeats one) still count.
    repeated = [*BASE_OVERRIDES, "strategy.correctness=held_out", *FEDGEMS_OVERRIDES[len(BASE_OVERRIDES) :]]
    same = Job("fedgems", "federated", "alpha0.5", 0, tuple(repeated))
    assert resolved(same.hydra_overrides()) == resolved(job.hydra_overrides())
    path.write_text(json.dumps({"overrides": same.hydra_overrides(), "rounds": [], "seconds": 1.0}))
    assert read_result(tmp_path, job) is not None
    assert resolved(["a=1", "b=2", "a=3"]) == {"a": "3", "b": "2"}


def test_fedgems_is_the_last_ablation_step_and_the_late_steps_run_in_every_setting() -> None:
    from benchmarks.knowledge.grid import (
        ABLATION,
        BASE_OVERRIDES,
        EXTRAS,
        FEDGEMS_OVERRIDES,
        LATE_STEPS,
        overrides_through,
        resolved,
    )

    settings = resolved(FEDGEMS_OVERRIDES)
    assert settings["strategy.unlabelled_trust"] == "learned" and settings["strategy.unlabelled_cache"] == "3"
    assert resolved(overrides_through("+teacher_cache"))["strategy.unlabelled_cache"] == "8"
    assert resolved(BASE_OVERRIDES)["strategy.unlabelled_trust"] == "class_reliability"
    assert settings["strategy.server_ema"] == "0.99"
    assert settings["strategy.unlabelled_per_round"] == "5000" and settings["strategy.logits_dtype"] == "uint8"
    assert settings["strategy.client_tail_average"] == "0.5"
    assert settings["strategy.client_max_grad_norm"] == "1.0"
    assert ABLATION[-6][0] == "+client_keep_distilled" and settings["strategy.client_keep_distilled"] == "true"
    assert ABLATION[-5][0] == "+client_anchor" and settings["strategy.client_anchor"] == "1.0"
    assert ABLATION[-4][0] == "+client_finetune_2" and settings["strategy.client_finetune_epochs"] == "2"
    assert ABLATION[-3] == ("+teacher_cache_3", ("strategy.unlabelled_cache=3",))
    assert ABLATION[-2] == (
        "+unlabelled_5000",
        ("strategy.unlabelled_per_round=5000", "strategy.logits_dtype=uint8"),
    )
    assert ABLATION[-1] == ("+server_epochs_8", ("strategy.server_epochs=8",))
    jobs = plan({})
    for setting in SETTINGS:
        late = {job.method for job in jobs if job.setting == setting and job.method in LATE_STEPS and job.seed == 0}
        assert late == set(LATE_STEPS), setting
    # FedGEMS before its last step has every seed in every setting, to compare the two on three seeds.
    for setting in SETTINGS:
        seeds = {job.seed for job in jobs if job.setting == setting and job.method == ABLATION[-2][0]}
        assert seeds == {0, 1, 2}, setting
    # Clients alone keep FedGEMS' options from before the learned trust, and its client bound.
    local = next(job for job in jobs if job.kind == "local_only")
    assert local.overrides[: len(BASE_OVERRIDES)] == BASE_OVERRIDES
    assert resolved(local.overrides)["strategy.client_max_grad_norm"] == settings["strategy.client_max_grad_norm"]
    # The server-alone baselines train their server as FedGEMS does: the weight average, as many unlabelled a round.
    for kind in ("transfer_only", "pseudo_label"):
        server_alone = resolved(next(job for job in jobs if job.kind == kind).overrides)
        assert server_alone["strategy.server_ema"] == settings["strategy.server_ema"], kind
        # ... but train to their plateau: their epochs pass over 1,000 samples (2,500), FedGEMS' over up to 11,000.
        assert int(server_alone["strategy.server_epochs"]) == 16 > int(settings["strategy.server_epochs"]) == 8, kind
    pseudo = resolved(next(job for job in jobs if job.kind == "pseudo_label").overrides)
    assert pseudo["strategy.unlabelled_per_round"] == "1500"  # FedGEMS' count before +unlabelled_5000; 5,000: an extra
    extra = next(e for e in EXTRAS if e.method == "pseudo_label_u5000")
    assert [resolved(job.overrides) for job in extra.jobs()] == [
        pseudo | {"strategy.unlabelled_per_round": settings["strategy.unlabelled_per_round"]}
    ] * 3


def test_the_benchmarks_fedgems_is_what_a_user_gets_with_strategy_fedgems_plus() -> None:
    from benchmarks.kd.grid import compose_config

    job = federated("fedgems", "alpha0.5", 0).hydra_overrides()
    preset = [o for o in job if not o.startswith("strategy")] + ["strategy=fedgems_plus"]
    assert compose_config(0, 8, "inprocess", preset) == compose_config(0, 8, "inprocess", job)


def test_every_peer_bounds_its_clients_steps_as_fedgems_does() -> None:
    """The bound is an SGD setting of every strategy; a peer without it would be compared with a handicap."""
    from benchmarks.kd.grid import compose_config
    from benchmarks.knowledge.grid import FEDGEMS_OVERRIDES, PEERS, federated, resolved

    bound = resolved(FEDGEMS_OVERRIDES)["strategy.client_max_grad_norm"]
    for peer in PEERS:
        settings = resolved(federated(peer, "alpha0.5", 0).hydra_overrides())
        strategy = "fedavg" if peer == "fedavg_low_tier" else peer
        assert settings["strategy"] == strategy and settings["strategy.client_max_grad_norm"] == bound
    assert resolved(federated("feddf", "alpha0.1", 1).hydra_overrides())["strategy.server_epochs"] == "2"
    cfg = compose_config(0, 1, "inprocess", federated("dsfl", "alpha0.5", 0).hydra_overrides())
    assert isinstance(cfg.strategy, DSFLConfig)
    assert cfg.strategy.client_max_grad_norm == float(bound)


def test_fedavg_of_the_low_tier_trains_the_low_tiers_model_everywhere_with_each_tiers_settings() -> None:
    """The realistic FedAvg under three tiers: the largest model every device affords, each tier's own schedule."""
    from benchmarks.kd.grid import compose_config

    profile = compose_config(0, 1, "inprocess", federated("fedgems", "alpha0.5", 0).hydra_overrides()).device_profile
    cfg = compose_config(0, 1, "inprocess", federated("fedavg_low_tier", "alpha0.5", 0).hydra_overrides())
    assert cfg.strategy.name == "fedavg"
    low = next(tier for tier in profile.tiers if tier.name == "low")
    assert {tier.model for tier in cfg.device_profile.tiers} == {low.model}
    for tier, own in zip(cfg.device_profile.tiers, profile.tiers, strict=True):
        assert (tier.name, tier.share, tier.local_epochs, tier.batch_size, tier.lr) == (
            own.name, own.share, own.local_epochs, own.batch_size, own.lr
        )  # fmt: skip


def test_the_setup_line_describes_fedgems_tiers_not_those_a_peer_changes(tmp_path: Path) -> None:
    peer, ours = federated("fedavg_low_tier", "alpha0.5", 0), federated("fedgems", "alpha0.5", 0)
    _write(tmp_path, peer, [_row(1, 0.7, 0.7)], low_model="peer_model")
    _write(tmp_path, ours, [_row(1, 0.8, 0.8)])
    report = tmp_path / "REPORT.md"
    write_report(tmp_path, report, 1, "python -m benchmarks.knowledge", [peer, ours], [])
    assert "Clients: low `cnn_tiny` (40%)" in report.read_text() and "peer_model" not in report.read_text()


def test_extras_are_their_base_jobs_with_overrides_left_out_or_added_and_are_not_planned() -> None:
    from benchmarks.knowledge.grid import CLIENT_BOUND_OVERRIDES, EXTRAS, base_job, extra_jobs, resolved

    planned = plan({setting: COSTLY_PEER for setting in SETTINGS})
    jobs = extra_jobs()
    assert len({job.name for job in jobs}) == len(jobs) and not set(jobs) & set(planned)
    assert not {job.name for job in jobs} & {job.name for job in planned}
    for extra in EXTRAS:
        for job in extra.jobs():
            base = base_job(extra.base, job.setting, job.seed)
            assert job.kind == base.kind and job.method == extra.method
            kept = [o for o in base.overrides if o not in extra.drop]
            assert job.overrides == (*kept, *extra.add)
    unbounded = resolved(next(e for e in EXTRAS if e.method == "dsfl_unbounded").jobs()[0].hydra_overrides())
    bounded = resolved(federated("dsfl", "alpha0.5", 0).hydra_overrides())
    assert unbounded == {k: v for k, v in bounded.items() if k not in resolved(CLIENT_BOUND_OVERRIDES)}
    assert "strategy.client_max_grad_norm" not in unbounded and unbounded["strategy"] == "dsfl"
    # 16 server epochs ran on FedGEMS before the anchor, and its results stay readable there.
    server16 = resolved(next(e for e in EXTRAS if e.method == "fedgems_server16").jobs()[0].hydra_overrides())
    fedgems = resolved(federated("fedgems", "alpha0.5", 0).hydra_overrides())
    # FedGEMS before its last five steps (the anchor, two fine-tuning epochs, the shorter cache, 5,000 as uint8, 8
    # server epochs).
    before_both = {k: v for k, v in fedgems.items() if k not in ("strategy.client_anchor", "strategy.server_epochs")}
    before_both["strategy.client_finetune_epochs"] = "1"
    before_both["strategy.unlabelled_cache"] = "8"
    before_both["strategy.unlabelled_per_round"] = "1500"
    before_both["strategy.logits_dtype"] = "float16"
    assert server16 == {**before_both, "strategy.server_epochs": "16"}
    # 10,000 a round as uint5 ran before the server trained 8 epochs a round, and its results stay readable there.
    u10000 = resolved(next(e for e in EXTRAS if e.method == "fedgems_u10000").jobs()[0].hydra_overrides())
    before_server8 = {k: v for k, v in fedgems.items() if k != "strategy.server_epochs"}
    assert u10000 == before_server8 | {"strategy.unlabelled_per_round": "10000", "strategy.logits_dtype": "uint5"}
    # One extra per other anchor weight: FedGEMS before the longer fine-tuning with only that weight changed.
    anchors = {e.method: resolved(e.jobs()[0].hydra_overrides()) for e in EXTRAS if "anchor" in e.method}
    assert {m: s.pop("strategy.client_anchor") for m, s in anchors.items()} == {
        "fedgems_anchor0.5": "0.5",
        "fedgems_anchor2": "2.0",
    }
    assert all(settings == before_both for settings in anchors.values())
    shared = next(e for e in EXTRAS if e.method == "transfer_only_epochs4").jobs()
    assert [job.setting for job in shared] == ["any"] * 3  # a shared baseline runs once per seed


def test_extras_run_only_when_asked_and_are_reported_once_finished(tmp_path: Path) -> None:
    from benchmarks.knowledge.__main__ import pending, reported_jobs
    from benchmarks.knowledge.grid import EXTRAS, base_job

    extra = next(e for e in EXTRAS if e.method == "fedgems_anchor2")
    job = extra.jobs()[0]
    assert job not in pending(tmp_path, [], set()) and job in pending(tmp_path, [], set(), extras=True)
    assert job not in reported_jobs(tmp_path) and job in reported_jobs(tmp_path, extras=True)
    ours = federated("fedgems", "alpha0.5", 0)
    _write(tmp_path, ours, [_row(1, 0.80, 0.8)])
    _write(tmp_path, base_job("+client_anchor", "alpha0.5", 0), [_row(1, 0.79, 0.8)])
    _write(tmp_path, job, [_row(1, 0.81, 0.8)])
    assert job in reported_jobs(tmp_path) and job not in pending(tmp_path, [], set(), extras=True)
    report = tmp_path / "REPORT.md"
    write_report(tmp_path, report, 1, "python -m benchmarks.knowledge", reported_jobs(tmp_path), [])
    lines = report.read_text().splitlines()
    at = lines.index(next(line for line in lines if line.startswith("| **fedgems** | 1 | 0.8000 |")))
    assert lines[at + 1].startswith("| +client_anchor | 1 | 0.7900 |")  # its base, the step before FedGEMS' last
    assert lines[at + 2].startswith("| +client_anchor at 2.0 | 1 | 0.8100 |")
    assert "`+client_anchor at 2.0` is `+client_anchor` with `strategy.client_anchor=2.0`." in lines
    assert "not run (time): `alpha0.5/fedgems_anchor2/seed1`" not in report.read_text()  # not asked for


def test_the_larger_clients_extra_changes_only_two_tiers_models_and_keeps_the_server_ten_times_larger() -> None:
    from benchmarks.knowledge.grid import EXTRAS, base_job, resolved
    from fl_kd.models.report import count_parameters
    from fl_kd.models.zoo import build_model

    extra = next(e for e in EXTRAS if e.method == "fedgems_larger_clients")
    (job,) = extra.jobs()
    larger = resolved(job.hydra_overrides())
    ran_on = resolved(base_job("+client_finetune_2", "alpha0.5", 0).hydra_overrides())  # FedGEMS of its time
    changed = {key: value for key, value in larger.items() if ran_on.get(key) != value}
    assert changed == {"device_profile.tiers.low.model": "cnn_small", "device_profile.tiers.mid.model": "cnn_medium"}
    size = {name: count_parameters(build_model(name, (1, 28, 28), 10, seed=0)) for name in ("cnn_medium", "cnn_server")}
    assert size["cnn_server"] >= 10 * size["cnn_medium"]  # the largest tier is still the high tier's cnn_medium


def test_the_required_plan_is_the_issues_grid_in_the_full_plans_order(tmp_path: Path) -> None:
    from benchmarks.knowledge.__main__ import parse_args, pending, reported_jobs
    from benchmarks.knowledge.grid import FEDGEMS, SEEDS, ablation_jobs

    best = {setting: COSTLY_PEER for setting in SETTINGS}
    required = plan(best, required_only=True)
    assert required == [job for job in plan(best) if job in set(required)]  # same order, a subsequence
    names = {job.name for job in required}
    assert {f"{s}/{m}/seed0" for s in SETTINGS for m in (FEDGEMS, "local_only", *PEERS)} <= names
    assert {f"{s}/{m}/seed{k}" for s in SETTINGS for m in (FEDGEMS, COSTLY_PEER) for k in SEEDS} <= names
    assert {f"any/{m}/seed{k}" for m in ("transfer_only", "pseudo_label") for k in SEEDS} <= names
    assert "any/ceiling/seed0" in names
    # FedGEMS and the best peer 9 jobs each, 5 other peers x 3 settings, local-only 9, server-alone 6, the ceiling.
    assert len(required) == 49
    assert not set(ablation_jobs()) & set(required) and not set(variant_jobs()) & set(required)
    assert not set(ablation_jobs()) & set(pending(tmp_path, [], set(), required_only=True))
    assert set(reported_jobs(tmp_path, required_only=True)) == set(plan({}, required_only=True))
    out = ["--out", str(tmp_path)]
    assert parse_args(["--required-only", *out]).required_only and not parse_args(out).required_only


def test_the_augmented_extras_add_only_the_servers_shifts_and_mirror_images() -> None:
    from benchmarks.knowledge.grid import EXTRAS, base_job, resolved

    augmented = {e.method: e for e in EXTRAS if e.method.endswith("_augmented")}
    assert set(augmented) == {"transfer_only_augmented", "pseudo_label_augmented", "fedgems_augmented"}
    for extra in augmented.values():
        for job in extra.jobs():
            settings = resolved(job.hydra_overrides())
            base = resolved(base_job(extra.base, job.setting, job.seed).hydra_overrides())
            changed = {key: value for key, value in settings.items() if base.get(key) != value}
            assert changed == {"strategy.server_augment_shift": "2", "strategy.server_augment_mirror": "true"}
    assert [job.seed for job in augmented["transfer_only_augmented"].jobs()] == [0, 1, 2]  # as the tables' baseline
    assert [job.name for job in augmented["fedgems_augmented"].jobs()] == ["alpha0.5/fedgems_augmented/seed0"]


def test_the_budget_verdict_counts_what_jobs_took_and_estimates_the_rest_from_their_method() -> None:
    from benchmarks.knowledge.budget import cost_lines

    required = plan({setting: COSTLY_PEER for setting in SETTINGS}, required_only=True)
    cost = {"fedgems": 1200.0, COSTLY_PEER: 600.0, "ceiling": 900.0}
    done: dict[Job, dict[str, Any]] = {job: {"seconds": cost.get(job.method, 300.0)} for job in required}
    total = sum(r["seconds"] for r in done.values()) / 2 / 60
    line = cost_lines(required, done)[0]
    assert f"**{'holds' if total <= 100 else 'MISSED'}** ({total:.0f} minutes" in line and "49 finished" in line
    # Two FedGEMS jobs not run: counted at the mean of FedGEMS' finished jobs (one of which took longer).
    unrun = [job for job in required if job.method == "fedgems"][:2]
    partial = {job: r for job, r in done.items() if job not in unrun}
    partial[next(job for job in partial if job.method == "fedgems")] = {"seconds": 1900.0}
    expected = (total * 120 - 3 * 1200 + 1900 + 2 * (1900 + 6 * 1200) / 7) / 120
    line = cost_lines(required, partial)[0]
    assert f"({expected:.0f} minutes" in line and "47 finished" in line and "2 not run" in line
    # A method with no finished job, or a best peer not chosen, leaves the verdict open and the figure a bound.
    no_ceiling = {job: r for job, r in done.items() if job.method != "ceiling"}
    line = cost_lines(required, no_ceiling)[0]
    assert "not measured (at least" in line and "no finished job of `ceiling`" in line
    line = cost_lines(required, done, unchosen=["alpha0.1"])[0]
    assert "not measured (at least" in line and "extra seeds in alpha0.1 not planned yet" in line


def test_the_report_ends_its_expectations_with_the_budget_verdict(tmp_path: Path) -> None:
    required = plan({}, required_only=True)
    ours = federated("fedgems", "alpha0.5", 0)
    _write(tmp_path, ours, [_row(1, 0.80, 0.7)])
    report = tmp_path / "REPORT.md"
    write_report(tmp_path, report, 1, "cmd", required, [])  # no peer has finished: no best peer is known
    expectations = report.read_text().split("### Expectations")[1].split("###")[0].strip().splitlines()
    assert expectations[-1].startswith("- The issue's 43 required jobs on 2 cores within about 100 minutes: ")
    # FedGEMS' other eight jobs are estimated from the one that ran; no other method has a job to estimate from.
    assert "1 finished, 1 CPU-minutes; 8 not run, 8 CPU-minutes at their method's mean" in expectations[-1]
    assert "not measured (at least " in expectations[-1]


def test_the_report_names_the_code_of_its_jobs(tmp_path: Path) -> None:
    jobs = [federated("fedgems", "alpha0.5", seed) for seed in (0, 1, 2)]
    for job, code in zip(jobs, ("aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"), strict=True):
        _write(tmp_path, job, [_row(1, 0.8, 0.7)], code=code)
    report = tmp_path / "report.md"
    write_report(tmp_path, report, 1, "python -m benchmarks.knowledge", jobs, [])
    assert (
        "Code of the jobs (digest of the package and the benchmarks): aaaaaaaaaaaa (2 jobs), bbbbbbbbbbbb (1 job)."
        in (report.read_text())
    )


def test_a_margin_exactly_on_its_bound_holds_and_a_fall_without_figures_is_not_a_hold(tmp_path: Path) -> None:
    """0.60 - 0.55 is 4.999... points in floating point; a seed whose server has no figure measured no fall."""
    from benchmarks.knowledge.verdicts import verdict_lines

    local = Job("local_only", "local_only", "alpha0.5", 0)
    _write(tmp_path, federated("fedgems", "alpha0.5", 0), [_row(1, 0.8735, 0.60), _row(2, 0.8635, 0.60)])
    _write(tmp_path, Job("transfer_only", "transfer_only", "any", 0), [_row(2, 0.8135, math.nan)])
    _write(tmp_path, local, [_row(2, math.nan, 0.55)])
    jobs = [federated("fedgems", "alpha0.5", 0), Job("transfer_only", "transfer_only", "any", 0), local]
    done = {job: record for job in jobs if (record := read_result(tmp_path, job)) is not None}
    text = "\n".join(verdict_lines(done, Figures(tmp_path)))
    assert "+5.0 points (expected >= +5; seeds [0]): **holds**" in text
    assert "fall after the best round <= 1 point: **holds** (largest 1.0 points over 1 of 1 seed(s)" in text
    assert "above local-only by >= 5 points (global test; seeds [0]): **holds**" in text

    nan_seed = federated("fedgems", "alpha0.5", 1)  # seeds 0 and 1 of FedGEMS, seed 0 alone of local-only
    _write(tmp_path, nan_seed, [_row(1, math.nan, 0.40), _row(2, math.nan, 0.40)])
    done[nan_seed] = read_result(tmp_path, nan_seed)  # type: ignore[assignment]
    text = "\n".join(verdict_lines(done, Figures(tmp_path)))
    assert "over 1 of 2 seed(s)" in text  # seed 1 measured no fall, and is not a hold either
    # Clients set against local-only on the seeds both have: seed 1's 0.40 is left out, not averaged in.
    assert "(global test; seeds [0]): **holds** (low 0.6000 vs 0.5500 (+5.0)" in text
