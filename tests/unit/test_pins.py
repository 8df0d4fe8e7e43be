"""All pins live in pyproject.toml; environment.yml mirrors them exactly."""

from __future__ import annotations

import tomllib

import yaml
from packaging.version import Version

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


GPU_OVERRIDES = {"transformers": "5.17.0", "numpy": "2.3.5"}  # vLLM 0.31.0 needs transformers<5.18, numpy<2.4
GPU_EXTRA = {"vllm": "0.31.0", "deepspeed": "0.19.8"}


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name] = version
    return out


def test_gpu_requirements_are_the_cpu_pins_with_declared_overrides():
    """requirements/gpu.txt = every runtime pin of pyproject.toml, except the declared overrides, plus vLLM
    (the newest TRL 1.16 accepts) and DeepSpeed; its committed PyPI resolution has the same versions."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    cpu = _pins(project["project"]["dependencies"])
    gpu = _pins((REPO_ROOT / "requirements" / "gpu.txt").read_text().splitlines())
    assert gpu == {**cpu, **GPU_OVERRIDES, **GPU_EXTRA}
    lines = (REPO_ROOT / "requirements" / "gpu-resolution.txt").read_text().splitlines()
    resolved = _pins(lines)
    for name, version in gpu.items():  # compared as versions: "0.1.1-2209072238" is "0.1.1.post2209072238"
        assert Version(resolved[name.lower()]) == Version(version), name
