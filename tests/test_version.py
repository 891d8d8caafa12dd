"""service.version: the installed distribution's version, and "unknown" for a source tree never installed."""

import tomllib
from importlib.metadata import PackageNotFoundError
from pathlib import Path

from service import version as version_module


def _project_name() -> str:
    return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["name"]


def test_the_version_is_the_one_of_this_projects_distribution(monkeypatch):
    asked = []
    monkeypatch.setattr(version_module, "version", lambda name: asked.append(name) or "9.8.7")
    assert version_module.package_version() == "9.8.7"
    assert asked == [_project_name()]


def test_a_tree_that_was_never_installed_reports_unknown(monkeypatch):
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(version_module, "version", missing)
    assert version_module.package_version() == "unknown"
