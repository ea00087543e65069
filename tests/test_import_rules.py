"""The house rules of docs/architecture.md, checked on every module's imports.

* the core (``fl_kd/``) imports neither Flower nor Hydra/OmegaConf, nor any adapter package;
* ``clients/`` and ``strategies/`` meet only through messages: neither imports the other, nor the entry points;
* nothing imports the entry points (``simulations/``) except the entry points themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folder -> import prefixes its modules must not use.
FORBIDDEN = {
    "fl_kd": ("flwr", "hydra", "omegaconf", "fl_kd.strategies", "fl_kd.clients", "fl_kd.simulations", "fl_kd.conf"),
    "clients": ("fl_kd.strategies", "fl_kd.simulations"),
    "strategies": ("fl_kd.clients", "fl_kd.simulations"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_import_rules(folder: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(folder)
        for line, name in _imports(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN[folder])
    ]
    assert not broken, "\n".join(broken)


def test_the_rules_would_catch_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from fl_kd.strategies.fedgems import FedGEMS\nimport flwr.app\n")
    assert [name for _, name in _imports(module)] == ["fl_kd.strategies.fedgems", "flwr.app"]


@pytest.mark.parametrize("folder", ["fl_kd", "strategies", "clients", "simulations"])
def test_no_module_over_400_lines(folder: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in _modules(folder) if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (one job per module): {long}"
