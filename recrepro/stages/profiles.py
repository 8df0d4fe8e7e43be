"""Notebook 03: a user profile for every instance, written offline (PAPER.md 1.3)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recrepro.agent.corpus import ensure_tiny_agent_model
from recrepro.config import Profile
from recrepro.progress import stage_entry
from recrepro.tools.profile_writers import ProfileGenerator
from recrepro.tools.profiles import write_user_profiles

@stage_entry
def run_user_profiles(profile: Profile, root: Path | str = ".", generator: ProfileGenerator | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Notebook 03: a profile for every instance (:func:`recrepro.tools.profiles.write_user_profiles`).

    A tiny offline profile writer is built here, with the agent's tokenizer corpus, because the
    tools layer below cannot build agent models.
    """
    def tiny_model(name: str) -> Path:
        return ensure_tiny_agent_model(profile.run_dir(root), name, seed=profile.run.seed, tools=profile.tools)

    return write_user_profiles(profile, root, generator, progress=progress, tiny_model=tiny_model)
