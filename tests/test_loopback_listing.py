"""``online_nodes``: the poll that decides when a loopback deployment is up answers "none yet" when the CLI fails.

A fake ``flwr`` on ``PATH`` stands in for the CLI, so no SuperLink is needed.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from fl_kd.simulations.loopback import online_nodes


def _fake_flwr(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flwr"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_online_nodes_reads_the_online_ones(tmp_path: Path) -> None:
    listing = '{"nodes": [{"node-id": 7, "status": "online"}, {"node-id": 9, "status": "offline"}]}'
    env = _fake_flwr(tmp_path, f"echo 'Loading...'; echo '{listing}'")
    assert online_nodes(env, tmp_path) == [7]


@pytest.mark.parametrize("body", ["exit 1", "echo 'not json {'"])
def test_a_failed_listing_means_none_online_yet(tmp_path: Path, body: str) -> None:
    assert online_nodes(_fake_flwr(tmp_path, body), tmp_path) == []


def test_a_listing_that_hangs_means_none_online_yet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = _fake_flwr(tmp_path, "exec sleep 30")
    started = time.monotonic()
    assert online_nodes(env, tmp_path, timeout=0.5) == []
    assert time.monotonic() - started < 10.0
    assert "no answer within" in caplog.text
