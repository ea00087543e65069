"""The KD benchmark's markdown report: one function per section, each also returning its numbers for JSON."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from benchmarks.common import machine_info, machine_line, markdown_table, mean
from benchmarks.kd.expectations import expectations_section
from benchmarks.kd.statistics import RUNTIMES, TIMING_KEYS, SeedRun, compare_runtimes, final, kd_rows, pm, tier_names
from fl_kd.config import to_mapping

if TYPE_CHECKING:
    from fl_kd.kd.config import ExperimentConfig

#: A report section: its markdown lines and its numbers.
Section = tuple[list[str], dict[str, Any]]


def config_lines(cfg: ExperimentConfig) -> list[str]:
    """The settings that shape the numbers, one bullet each."""
    tiers = ", ".join(
        f"{tier.name} ({tier.model}, share {tier.share:g}, {tier.local_epochs} local epochs, "
        f"batch {tier.batch_size}, lr {tier.lr:g})"
        for tier in cfg.device_profile.tiers
    )
    partition = ", ".join(f"{k}={v}" for k, v in to_mapping(cfg.partition).items() if v is not None)
    strategy = ", ".join(
        f"{k} {v}" for k, v in to_mapping(cfg.strategy).items() if k not in ("name", "rounds") and v is not None
    )
    transfer = f"transfer set {cfg.transfer.labelled} labelled"
    transfer += f" + {cfg.transfer.unlabelled} unlabelled samples" if cfg.transfer.unlabelled else " samples"
    return [
        f"- dataset `{cfg.dataset.name}`, {cfg.num_clients} clients, partition ({partition}), {transfer}",
        f"- device profile `{cfg.device_profile.name}`: server `{cfg.device_profile.server_model}`; tiers {tiers}",
        f"- strategy `{cfg.strategy.name}`: {strategy}",
    ]


def header_section(
    runs: Sequence[SeedRun], cfg: ExperimentConfig, command: str, started: dt.datetime, entry: str
) -> Section:
    """Title, what was run, where and when, and the settings."""
    seeds = [run.seed for run in runs]
    rounds = len(runs[0].inprocess)
    elapsed = (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60
    lines = [
        "# Selective-KD benchmark",
        "",
        "Selective knowledge distillation into a large server model (FedGEMS-like, Cheng et al., 2021,",
        "arXiv:2110.11027) on the default config. Per seed, on the same federation: the Flower simulation, the",
        "in-process reference runner, a local-only baseline (same clients, sampling and local epochs; no transfer",
        "set, no server, no distillation), and a transfer-only server (the same server, seeds and settings, trained",
        f"on the labelled transfer set with no client answers). Written by `{entry}`.",
        "",
        f"- command: `{command}`",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; total benchmark time {elapsed:.1f} min",
        f"- machine: {machine_line()}",
        f"- seeds {seeds}, {rounds} rounds; mean ± sample std over seeds unless marked",
        *config_lines(cfg),
        "",
    ]
    return lines, {"command": command, "seeds": seeds, "rounds": rounds, "machine": machine_info()}


def server_section(runs: Sequence[SeedRun]) -> Section:
    """Server accuracy per round for both runtimes and the transfer-only server; whether the runtimes agree."""
    has_flower = all(run.flower for run in runs)
    rounds = len(runs[0].inprocess)
    table = []
    per_round: dict[int, dict[str, list[float]]] = {}
    for r in range(rounds):
        flower = [float(run.flower[r]["server_acc"]) for run in runs if has_flower]
        inprocess = [float(run.inprocess[r]["server_acc"]) for run in runs]
        transfer_only = [float(run.server_only[r]["server_acc"]) for run in runs]
        kd_clients = [float(kd_rows(run)[r]["client_acc_mean"]) for run in runs]
        local_clients = [float(run.local_only[r]["client_acc_mean"]) for run in runs]
        flower_cell = pm(flower) if has_flower else "skipped"
        table.append([str(r + 1), flower_cell, pm(inprocess), pm(transfer_only), pm(kd_clients), pm(local_clients)])
        per_round[r + 1] = {"flower": flower, "inprocess": inprocess, "transfer_only": transfer_only}
    header = [
        "round",
        "server, Flower",
        "server, in-process",
        "server, transfer set only",
        "clients (mean), KD",
        "clients (mean), local-only",
    ]
    lines = ["## Server accuracy per round (global test set)", "", markdown_table(header, table), ""]
    matched, differences = compare_runtimes(runs) if has_flower else (None, [])
    if matched is None:
        lines.append("Flower was skipped (`--skip-flower`): no runtime comparison.")
    elif matched:
        num_keys = len(set(runs[0].inprocess[0]) - TIMING_KEYS)
        lines.append(
            f"**Flower and in-process runs matched exactly**: all {num_keys} non-timing metrics of every round "
            f"and seed are bit-identical ({len(runs)} seeds x {rounds} rounds)."
        )
    else:
        lines.append(f"**Flower and in-process runs differ** ({len(differences)} values); first ones:")
        lines += [f"- {d}" for d in differences[:10]]
    lines.append("")
    return lines, {"server_acc": per_round, "runtimes_match": matched, "runtime_differences": differences}


def client_section(runs: Sequence[SeedRun]) -> Section:
    """Each tier's final client accuracy with distillation against local-only, global and personalised."""
    kd_source = "Flower simulation" if all(run.flower for run in runs) else "in-process runner"
    table = []
    accuracies: dict[str, dict[str, dict[str, float]]] = {}
    for tier in [*tier_names(runs), None]:
        suffix = f"_{tier}" if tier else ""
        cells = []
        entry = {}
        for prefix in ("client_acc", "client_pacc"):
            key = f"{prefix}{suffix}_mean"
            kd, local = mean(final(runs, key, "kd")), mean(final(runs, key, "local_only"))
            cells += [f"{kd:.4f}", f"{local:.4f}", f"{kd - local:+.4f}"]
            entry[prefix] = {"kd": kd, "local_only": local}
        count = sum(1 for name in runs[0].tiers.values() if name == tier) if tier else len(runs[0].tiers)
        model = runs[0].tier_models[tier] if tier else "-"
        table.append([tier or "**all**", model, str(count), *cells])
        accuracies[tier or "all"] = entry
    header = ["tier", "model", "clients", "global: KD", "global: local-only", "Δ"]
    header += ["personalised: KD", "personalised: local-only", "Δ"]
    title = f"## Client accuracy per tier, final round (mean over seeds; KD from the {kd_source})"
    return [title, "", markdown_table(header, table), ""], {"client_acc": accuracies}


def bytes_section(runs: Sequence[SeedRun], transfer_size: int) -> Section:
    """Logits uplink per client and round against each tier's weights."""
    per_client = {
        direction: [
            [float(row[f"{direction}_bytes"]) / n for row, n in zip(kd_rows(run), run.num_selected, strict=True)]
            for run in runs
        ]
        for direction in ("uplink", "downlink")
    }
    uplink = per_client["uplink"]
    per_round = mean([mean(values) for values in uplink])
    first_round = mean([values[0] for values in uplink])
    last_round = mean([values[-1] for values in uplink])
    results: dict[str, Any] = {
        "uplink_logits_per_client": {"mean": per_round, "first": first_round, "last": last_round}
    }
    table = []
    for tier in tier_names(runs):
        client = next(k for k, name in runs[0].tiers.items() if name == tier)
        weights = runs[0].weight_nbytes[client]
        table.append(
            [tier, runs[0].tier_models[tier], f"{weights:,}", f"{per_round:,.0f}", f"{first_round:,.0f}"]
            + [f"{last_round:,.0f}", f"{weights / per_round:.1f}x"]
        )
        results[tier] = {"weights": weights}
    header = ["tier", "model", "weights (bytes)", "logits, mean over rounds", "logits, round 1"]
    header += ["logits, last round", "weights / logits (mean)"]
    answered = [mean([float(row["num_answered"]) for row in kd_rows(run)]) for run in runs]
    downlink = mean([mean(values) for values in per_client["downlink"]])
    lines = [
        "## Uplink per client per round: logits vs model weights",
        "",
        "Logits: positions (int64) + logits on the transfer samples the server still asks for; every selected",
        "client answers the same query, so the size does not depend on the tier. Weights: the tier model's",
        "float32 parameters, what FedAvg-style weight sharing would upload each round.",
        "",
        markdown_table(header, table),
        "",
        f"Queried transfer samples per round: {pm(answered, 1)} (of {transfer_size}; the knowledge cache "
        f"shrinks the query). Downlink per client per round (query + server logits on the whole transfer set): "
        f"{downlink:,.0f} bytes.",
        "",
    ]
    return lines, {"bytes": results}


def wall_section(runs: Sequence[SeedRun]) -> Section:
    """Wall seconds per round and per whole run, for each runtime and baseline that ran."""
    table = []
    results: dict[str, Any] = {}
    for name, label in RUNTIMES.items():
        if not all(getattr(run, name) for run in runs):
            continue
        walls = [[float(row["wall_seconds"]) for row in getattr(run, name)] for run in runs]
        totals = [run.total_seconds[name] for run in runs]
        outside = [total - math.fsum(w) for total, w in zip(totals, walls, strict=True)]
        later = [mean(w[1:]) for w in walls if len(w) > 1]
        table.append(
            [label, pm(totals, 1), pm([mean(w) for w in walls], 2), pm([w[0] for w in walls], 2)]
            + [pm(later, 2) if later else "-", pm(outside, 1)]
        )
        results[name] = {"total": totals, "rounds": walls}
    header = ["runtime", "whole run", "per round (mean)", "round 1", "rounds 2+ (mean)", "outside rounds"]
    lines = [
        "## Wall seconds",
        "",
        "Per round as each runtime measures it (Flower: from `configure_train` to `aggregate_evaluate` on the",
        "ServerApp); whole run = the `run_experiment` call, so for Flower it includes the launcher, SuperLink and",
        "Ray start-up and shutdown, which no round sees.",
        "",
        markdown_table(header, table),
        "",
    ]
    return lines, {"wall_seconds": results}


def render_report(
    runs: Sequence[SeedRun], cfg: ExperimentConfig, command: str, started: dt.datetime, entry: str
) -> tuple[str, dict[str, Any]]:
    """The markdown report, and the same numbers as a JSON-ready dict."""
    server_lines, server_results = server_section(runs)
    sections = (
        header_section(runs, cfg, command, started, entry),
        (server_lines, server_results),
        client_section(runs),
        bytes_section(runs, cfg.transfer.labelled),
        wall_section(runs),
        expectations_section(runs, server_results["runtimes_match"]),
    )
    lines: list[str] = []
    results: dict[str, Any] = {}
    for section_lines, section_results in sections:
        lines += section_lines
        results |= section_results
    return "\n".join(lines), results
