"""Notebook 00: the record of the run (versions, hardware, profile)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from recrepro import paths
from recrepro.config import Profile
from recrepro.io import write_json_atomic
from recrepro.progress import stage_entry

KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "recbole", "numpy", "pandas", "papermill")


def environment_report(profile: Profile) -> dict:
    """Versions, hardware and the profile in use, for the record of every run."""
    import torch

    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "profile": profile.run.name,
        "profile_file": profile.source_path,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda_available": bool(torch.cuda.is_available()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "packages": versions,
        "seed": profile.run.seed,
    }


@stage_entry
def run_setup(profile: Profile, root: Path | str = ".") -> dict:
    report = environment_report(profile)
    write_json_atomic(paths.environment_file(profile, root), report)
    return report
