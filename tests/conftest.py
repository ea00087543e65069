"""Shared test settings: one thread per process, the slow tests first, and tests that need a dataset.

The suite runs on two pytest-xdist workers (``addopts`` in ``pyproject.toml``). A test marked ``slow`` starts
Flower's own processes (``flwr run``, a SuperLink, SuperNodes) and spends most of its time waiting on them; those
run first, so that neither worker is left alone with one at the end.

A test that reads the real Fashion-MNIST files carries ``@pytest.mark.requires_fashion_mnist``; without the Debian
package ``dataset-fashion-mnist`` it is skipped with the install command as the reason, so the README's test
command passes on a fresh machine. CI installs the package and sets ``FL_KD_REQUIRE_DATASETS=1``: then any test
skipped for want of that package fails instead, so a broken install cannot pass unnoticed.

The server's key (``FL_KD_SERVER_KEY``, which keys the FedGEMS canaries' draw) is set for the whole session, and for
the Flower processes tests start; ``tests/test_canaries.py`` checks what happens without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from fl_kd.data.idx import MNIST_FILE_STEMS, find_idx_file
from fl_kd.data.images import DEBIAN_FASHION_MNIST_DIR
from fl_kd.secret import SERVER_KEY_ENV

torch.set_num_threads(1)
os.environ.setdefault(SERVER_KEY_ENV, "fl-kd tests")

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_SKIP = (
    f"Fashion-MNIST files not found in {DEBIAN_FASHION_MNIST_DIR}: install them with "
    f"`sudo apt-get install -y {FASHION_MNIST_PACKAGE}`"
)
#: Set by CI: a test skipped because a dataset package is missing fails instead.
REQUIRE_DATASETS = "FL_KD_REQUIRE_DATASETS"


def fashion_mnist_installed() -> bool:
    """Whether the four Fashion-MNIST files of the Debian package are there (looked up, not read)."""
    return all(find_idx_file(DEBIAN_FASHION_MNIST_DIR, stem) is not None for stem in MNIST_FILE_STEMS.values())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"requires_fashion_mnist: reads the Fashion-MNIST files of the Debian package {FASHION_MNIST_PACKAGE}",
    )
    config.addinivalue_line("markers", "slow: starts Flower processes and waits on them (20 s or more); runs first")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    if fashion_mnist_installed():
        return
    skip = pytest.mark.skip(reason=FASHION_MNIST_SKIP)
    for item in items:
        if item.get_closest_marker("requires_fashion_mnist") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get(REQUIRE_DATASETS) == "1" and FASHION_MNIST_PACKAGE in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped, but {REQUIRE_DATASETS}=1 requires the dataset: {report.longrepr}"
