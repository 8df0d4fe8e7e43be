"""All pins live in pyproject.toml; environment.yml mirrors them exactly."""

from __future__ import annotations

import tomllib

import yaml

from tests.conftest import REPO_ROOT


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = set(project["project"]["dependencies"]) | set(project["project"]["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_list) == pins
    assert "torch==2.13.0" in pins  # exact pin: an open range pulls a CUDA build (DESIGN.md 4)
    assert all("==" in pin for pin in pins), [p for p in pins if "==" not in p]
    assert project["tool"]["recrepro"]["no_deps"] == ["recbole==1.2.1"]
