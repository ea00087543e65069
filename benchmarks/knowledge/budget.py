"""Issue 9's required jobs as the results stand, and what they cost on two cores against the 100 minutes allowed.

The verdict is computed from the jobs' own ``seconds`` (one torch thread each, two jobs at a time on the two cores,
so a job's seconds are CPU-seconds of one core), not written by hand: a finished job counts what it took, a job not
run yet counts the mean of the finished jobs of its method, and a method with no finished job is named, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import mean
from benchmarks.knowledge.grid import COSTLY_PEER, PEERS, SETTINGS, Job, choose_best_peer, federated, plan
from benchmarks.knowledge.run import read_result

BUDGET_MINUTES = 100.0
CORES = 2


def budget_lines(out: Path, done: Mapping[Job, Mapping[str, Any]]) -> list[str]:
    """One bullet: the cost of the required jobs of ``out``'s plan on :data:`CORES` cores against
    :data:`BUDGET_MINUTES`.

    ``done`` may hold more than the required jobs (ablation steps, an earlier best peer's seeds): every finished
    job of a method informs the estimate for that method's unfinished ones. Where a setting's best peer is not known
    yet, its two extra seeds are not planned, and the verdict stays open.
    """
    best = best_peers(out)
    return cost_lines(plan(best, required_only=True), done, [s for s in SETTINGS if s not in best])


def cost_lines(
    required: Sequence[Job], done: Mapping[Job, Mapping[str, Any]], unchosen: Sequence[str] = ()
) -> list[str]:
    """:func:`budget_lines` for the ``required`` jobs, ``unchosen`` the settings without a best peer yet."""
    seconds_by_method: dict[str, list[float]] = {}
    for job, result in done.items():
        seconds_by_method.setdefault(job.method, []).append(float(result["seconds"]))
    measured = [float(done[job]["seconds"]) for job in required if job in done]
    missing = [job for job in required if job not in done]
    estimated = [mean(seconds_by_method[job.method]) for job in missing if job.method in seconds_by_method]
    unknown = sorted({job.method for job in missing if job.method not in seconds_by_method})
    minutes = (sum(measured) + sum(estimated)) / CORES / 60
    complete = not unknown and not unchosen
    verdict = f"**{'holds' if minutes <= BUDGET_MINUTES else 'MISSED'}**" if complete else "not measured"
    parts = [f"{len(measured)} finished, {sum(measured) / 60:.0f} CPU-minutes"]
    if estimated:
        parts.append(f"{len(estimated)} not run, {sum(estimated) / 60:.0f} CPU-minutes at their method's mean")
    if unknown:
        parts.append(f"no finished job of {', '.join(f'`{m}`' for m in unknown)} to estimate from")
    if unchosen:
        parts.append(f"the best peer's extra seeds in {', '.join(unchosen)} not planned yet (no best peer)")
    bound = "" if complete else "at least "
    return [
        f"- The issue's {len(required)} required jobs on {CORES} cores within about {BUDGET_MINUTES:.0f} minutes: "
        f"{verdict} ({bound}{minutes:.0f} minutes, {minutes / BUDGET_MINUTES:.1f}x; {'; '.join(parts)}; "
        "a job's seconds as it measured them, two at a time with one torch thread each).",
        "",
    ]


def best_peers(out: Path) -> dict[str, str]:
    """Per setting, the peer with the best final server accuracy at seed 0, once every peer has finished there.

    FedAvg of the server model, the dearest run, is not waited for, but it competes once it has finished.
    """
    chosen = {}
    for setting in SETTINGS:
        results = {peer: read_result(out, federated(peer, setting, 0)) for peer in PEERS}
        if all(result for peer, result in results.items() if peer != COSTLY_PEER):
            finals = {peer: float(r["rounds"][-1]["server_acc"]) for peer, r in results.items() if r}
            best = choose_best_peer(finals)
            if best is not None:
                chosen[setting] = best
    return chosen
