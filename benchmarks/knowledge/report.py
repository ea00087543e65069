"""The knowledge benchmark's section of ``BENCHMARKS_KD.md``, built from the finished jobs' ``result.json``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import code_line, machine_line, markdown_table, mean, std, write_section
from benchmarks.knowledge.budget import budget_lines
from benchmarks.knowledge.grid import (
    ABLATION,
    CLIENT_BOUND_OVERRIDES,
    EXTRAS,
    FEDGEMS,
    LATE_STEPS,
    PEER_OVERRIDES,
    PEER_STRATEGIES,
    PEERS,
    SEEDED_STEPS,
    SEEDED_VARIANTS,
    SETTINGS,
    VARIANT_BASES,
    VARIANTS,
    Extra,
    Job,
    ablation_jobs,
    variant_jobs,
)
from benchmarks.knowledge.run import read_result
from benchmarks.knowledge.verdicts import Figures, runs_of, verdict_lines

BEGIN, END = (
    "<!-- knowledge-benchmark:begin -->",
    "<!-- knowledge-benchmark:end -->",
)  # see benchmarks.common.kept_sections
TIERS = ("low", "mid", "high")
BASELINES = ("transfer_only", "pseudo_label", "local_only")


def write_report(
    out: Path,
    report: Path,
    rounds: int,
    command: str,
    jobs: Sequence[Job],
    failures: Sequence[str],
    note: str = "",
) -> None:
    """Replace (or append) the benchmark's section of ``report`` with one built from what finished under ``out``."""
    write_section(report, render(out, rounds, command, jobs, failures, note))


def render(out: Path, rounds: int, command: str, jobs: Sequence[Job], failures: Sequence[str], note: str = "") -> str:
    """The section, markers included; ``note`` (if any) follows the command line. The expectations end with the
    budget of issue 9's required jobs (:func:`benchmarks.knowledge.budget.budget_lines`)."""
    results = {job: read_result(out, job) for job in jobs}
    done = {job: r for job, r in results.items() if r is not None}
    figures = Figures(out)
    lines = [
        BEGIN,
        "## Knowledge benchmark: Fashion-MNIST, 20 clients, three tiers",
        "",
        f"`{command}` ({rounds} rounds per run; {len(done)} of {len(jobs)} jobs finished, "
        f"{sum(r['seconds'] for r in done.values()) / 60:.0f} CPU-minutes of jobs, two at a time with one torch "
        f"thread each; written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_line()}).",
        *filter(None, [code_line(done.values())]),
        "",
        *([note, ""] if note else []),
        *_setup_lines(done),
        *_ceiling_lines(done),
    ]
    for setting in SETTINGS:
        lines += _setting_lines(setting, done, figures)
    lines += _ablation_lines(done, figures)
    lines += verdict_lines(done, figures)
    lines[-1:] = budget_lines(out, done)  # the last bullet of the expectations
    missing = [job.name for job in jobs if job not in done]
    if missing or failures:
        lines += ["### Not finished", ""]
        lines += [f"- failed: {line}" for line in failures]
        lines += [f"- not run (time): `{name}`" for name in missing]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _setup_lines(done: dict[Job, dict[str, Any]]) -> list[str]:
    # FedGEMS' config describes the setup; a peer's may change the tiers (fedavg_low_tier).
    with_config = [(job, r["config"]) for job, r in done.items() if "config" in r]
    config = min(with_config, key=lambda pair: pair[0].method != FEDGEMS)[1] if with_config else None
    if config is None:
        return []
    tiers = config["device_profile"]["tiers"]
    tier_text = ", ".join(f"{name} `{t['model']}` ({t['share']:.0%})" for name, t in tiers.items())
    return [
        "- Data: Fashion-MNIST; transfer set 1,000 labelled + 10,000 unlabelled images taken from the training split;",
        "  the other 49,000 split among 20 clients by the setting's partitioner. Clients: "
        f"{tier_text}; server `{config['device_profile']['server_model']}`.",
        "- FedGEMS here is fl-kd's selective distillation with every extension of the ablation below (the last row),",
        "  what `fl-kd-sim strategy=fedgems_plus` runs (the extensions: `fl_kd/kd/fedgems/extensions.py`);",
        "  peers run their paper's mechanism with the defaults of `conf/strategy/`, untuned, on the same transfer set",
        "  (but DS-FL's aggregation: fl-kd's default sharpens the average by a power, the stronger peer here; the",
        "  paper's softmax of the average is the row `dsfl, the paper's ERA (softmax of the average)`),",
        "  except these compute cuts (their defaults were set for a 300-sample transfer set): "
        + "; ".join(f"{peer} `{' '.join(o)}`" for peer, o in PEER_OVERRIDES.items())
        + "; and the clients of every peer and of local-only training bound their steps as FedGEMS' do"
        f" (`{' '.join(CLIENT_BOUND_OVERRIDES)}`). FedAvg averages one architecture: `fedavg_server_model` trains"
        " the server model on every client, `fedavg_low_tier` the low tier's model ("
        + "; ".join(f"{peer} `{' '.join(o)}`" for peer, o in PEER_STRATEGIES.items())
        + ").",
        "- Cut, stated plainly: rounds before the last are evaluated on a fixed, class-stratified 2,000-image",
        "  subset of the test set (`evaluation.test_samples=2000`); the last round, so every final figure, on all",
        "  10,000. Runs since 2026-12-04 score the last round's server on the subset too (`server_acc_subset`): their",
        "  best round and fall after it are read on the subset alone, those of earlier runs on the subset then the",
        "  whole set. The server-alone baselines (`transfer_only`, `pseudo_label`) wrote no subset figure before",
        "  2026-12-06 (f2fa0e6), so their rows' best round and fall are read across the two sets.",
        "- Per-client bytes are per round and per sampled client (all 20 are sampled every round).",
        "",
    ]


def _ceiling_lines(done: dict[Job, dict[str, Any]]) -> list[str]:
    ceiling = next((r["ceiling"] for j, r in done.items() if j.kind == "ceiling"), None)
    if ceiling is None:
        return ["Centralised ceiling: not finished.", ""]
    seconds = sum(e["train_seconds"] for e in ceiling["epochs"])
    return [
        f"Centralised ceiling: `{ceiling['model']}` ({ceiling['parameters']:,} parameters) trained on all 60,000 "
        f"training images for {len(ceiling['epochs'])} epochs (`{ceiling['command']}`): test accuracy "
        f"**{ceiling['final_test_accuracy']:.4f}** (best epoch {ceiling['best_test_accuracy']:.4f}), "
        f"{seconds / 60:.0f} minutes of training.",
        "",
    ]


def _pm(values: Sequence[float | None], digits: int = 4) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        return f"{mean(finite):.{digits}f}"
    return f"{mean(finite):.{digits}f} ± {std(finite):.{digits}f}"


def _setting_lines(setting: str, done: dict[Job, dict[str, Any]], figures: Figures) -> list[str]:
    header = [
        "method", "seeds", "server final", "server best", "drop after best",
        *(f"{t} global" for t in TIERS), *(f"{t} own" for t in TIERS), "up kB/client", "down kB/client",
    ]  # fmt: skip
    rows = []
    shown_extras = []
    for method, label in _row_methods():
        runs = runs_of(done, method, setting)
        if not runs:
            continue
        shown_extras += [extra for extra in EXTRAS if extra.method == method]
        stats = [figures.run_figures(r) for r in runs]
        rows.append(
            [
                f"**{label}**" if method == FEDGEMS else label,
                str(len(runs)),
                _pm([s["server_final"] for s in stats]),
                _pm([s["server_best"] for s in stats]),
                _pm([s["drop_after_best"] for s in stats]),
                *(_pm([s.get(f"client_acc_{t}") for s in stats]) for t in TIERS),
                *(_pm([s.get(f"client_pacc_{t}") for s in stats]) for t in TIERS),
                _pm([s["uplink_kb"] for s in stats], digits=1),
                _pm([s["downlink_kb"] for s in stats], digits=1),
            ]
        )
    if not rows:
        return [f"### {setting}: nothing finished", ""]
    lines = [f"### {setting} ({' '.join(SETTINGS[setting])})", "", markdown_table(header, rows), ""]
    lines += [
        "Final round on the whole test set; mean ± standard deviation over seeds; *global*: a tier's mean client",
        "accuracy on the global test set, *own*: on each client's personalised test set (its own label mix);",
        "`transfer_only` and `pseudo_label` are the server model alone, `local_only` the clients alone;",
        "`fedgems+personal` is FedGEMS whose clients fine-tune a personal copy each round, `fedgems+ditto` FedGEMS",
        "whose clients keep a personal model across rounds (own: the personal model; global: the shared one),",
        "`fedgems+prior` FedGEMS without fine-tuning whose clients add their label prior to the logits on own data.",
        *(_extra_legend(extra) for extra in shown_extras),
        "",
    ]
    return lines + _per_round_lines(setting, done, figures)


def _row_methods() -> list[tuple[str, str]]:
    """The tables' rows in order, as ``(method, label)``: FedGEMS and its last ablation steps, the variants, the
    peers and the baselines, each followed by the extras that vary it."""
    steps = [name for name, _ in ABLATION if name in SEEDED_STEPS][::-1]
    rows = []
    for method in (FEDGEMS, *steps, *SEEDED_VARIANTS, *PEERS, *BASELINES):
        rows.append((method, method))
        rows += [(extra.method, extra.label) for extra in EXTRAS if extra.base == method]
    return rows


def _extra_legend(extra: Extra) -> str:
    changes = [f"without `{' '.join(extra.drop)}`"] if extra.drop else []
    changes += [f"with `{' '.join(extra.add)}`"] if extra.add else []
    return f"`{extra.label}` is `{extra.base}` {' and '.join(changes)}."


def _per_round_lines(setting: str, done: dict[Job, dict[str, Any]], figures: Figures) -> list[str]:
    runs = runs_of(done, FEDGEMS, setting)
    if not runs:
        return []
    run = runs[0]
    header = [
        "round", "server", *(f"{t} global" for t in TIERS), *(f"{t} own" for t in TIERS),
        "from clients", "up kB/client", "down kB/client", "server acc where no client trusted",
        "teacher / server on unlabelled",
    ]  # fmt: skip
    rows = []
    for row in figures.round_figures(run):
        rows.append(
            [
                str(row["round"]),
                f"{row['server_acc']:.4f}",
                *(f"{row.get(f'client_acc_{t}', math.nan):.4f}" for t in TIERS),
                *(f"{row.get(f'client_pacc_{t}', math.nan):.4f}" for t in TIERS),
                f"{row['client_share']:.2f}",
                f"{row['uplink_kb']:.1f}",
                f"{row['downlink_kb']:.1f}",
                _untrusted(row),
                _teacher(row),
            ]
        )
    return [
        f"Per round, FedGEMS seed {run['job']['seed']} in {setting} (rounds before the last on the test subset):",
        "",
        markdown_table(header, rows),
        "",
        "*from clients*: share of the round's distillation targets (labelled part plus the unlabelled subset asked)",
        "that came from client knowledge; *no client trusted*: the server's accuracy, before the round's training,",
        "on the held-out labelled samples on which no client was right; *teacher / server on unlabelled*: accuracy",
        "of the clients' fused teacher and of the server (before the round's training) on the unlabelled samples the",
        "server distils, against their true labels (a simulation-only diagnostic: do the clients know what the server",
        "does not?).",
        "",
    ]


def _untrusted(row: dict[str, Any]) -> str:
    if row.get("untrusted_accuracy") is None:
        return "–"
    return f"{row['untrusted_accuracy']:.3f} (n={row['n_untrusted']})"


def _teacher(row: dict[str, Any]) -> str:
    if row.get("teacher_unlabelled_accuracy") is None:
        return "–"
    return f"{row['teacher_unlabelled_accuracy']:.3f} / {row['server_unlabelled_accuracy']:.3f}"


def _ablation_lines(done: dict[Job, dict[str, Any]], figures: Figures) -> list[str]:
    rows = []
    for setting in SETTINGS:
        full = next((r for j, r in done.items() if j.method == FEDGEMS and j.setting == setting and j.seed == 0), None)
        steps = dict(zip([name for name, _ in ABLATION[:-1]], ablation_jobs(setting), strict=True))
        table = []
        for name, overrides in ABLATION:
            if setting != "alpha0.5" and name not in (*LATE_STEPS, ABLATION[-1][0]):
                continue
            result = done.get(steps[name]) if name in steps else full
            table.append(_summary_row(name, overrides, result, figures))
        rows.append((setting, table))
    bases = {name: base for name, base, _ in VARIANTS}
    variants = [
        _summary_row(
            f"{job.method} ({job.setting}; on {bases[job.method]})",
            job.overrides[len(VARIANT_BASES[bases[job.method]]) :],
            done[job],
            figures,
        )
        for job in variant_jobs()
        if job in done
    ]
    header = ["step", "adds", "server final", "server best", "clients global", "clients own", "up kB/client"]
    setting, table = rows[0]
    lines = [
        f"### Ablation ({setting}, seed 0): each row adds one extension to the row above",
        "",
        markdown_table(header, table),
        "",
        "The last steps in the other settings (each row adds to the row above, as in the ablation):",
        "",
    ]
    for setting, table in rows[1:]:
        lines += [f"{setting}:", "", markdown_table(header, table), ""]
    if variants:
        lines += [
            "Variants, each adding one option to FedGEMS up to the ablation step named (`fedgems`: all of them; "
            "seed 0):",
            "",
            markdown_table(header, variants),
            "",
        ]
    return lines


def _summary_row(name: str, overrides: Sequence[str], result: dict[str, Any] | None, figures: Figures) -> list[str]:
    adds = "`" + " ".join(overrides) + "`"
    if result is None:
        return [name, adds, "not run", "", "", "", ""]
    s = figures.run_figures(result)
    return [
        name,
        adds,
        f"{s['server_final']:.4f}",
        f"{s['server_best']:.4f}",
        f"{s['client_acc_mean']:.4f}",
        f"{s['client_pacc_mean']:.4f}",
        f"{s['uplink_kb']:.1f}",
    ]
