"""The installed layout: every core sub-package is shipped, and adapters install under the fl_kd namespace."""

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_core_package_is_declared() -> None:
    declared = set(_declared()["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "fl_kd").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert found - declared == set(), f"packages missing from pyproject.toml: {sorted(found - declared)}"


def test_adapters_install_under_the_fl_kd_namespace() -> None:
    package_dir = _declared()["package-dir"]
    assert package_dir["fl_kd.strategies"] == "strategies"
    assert package_dir["fl_kd.clients"] == "clients"
    assert all(name == "fl_kd" or name.startswith("fl_kd.") for name in _declared()["packages"])


def test_every_config_group_folder_ships_as_a_package_with_its_options() -> None:
    """Each ``conf/<group>`` is its own (namespace) package: left out, setuptools warns that it would be ignored."""
    declared = _declared()
    groups = {path.name for path in (ROOT / "conf").iterdir() if path.is_dir() and not path.name.startswith("__")}
    assert {f"fl_kd.conf.{group}" for group in groups} <= set(declared["packages"])
    assert all(declared["package-data"][f"fl_kd.conf.{group}"] == ["*.yaml"] for group in groups)
