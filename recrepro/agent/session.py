"""One dataset of one run, opened once per process and shared by every step that works on it.

A stage step (training rows, in-training validation, mining, test evaluation) needs the benchmark, the
item views and environments bound to a tool kit. Loading the benchmark, the SASRec space and the
user-profile store once per dataset, here, replaces a load per step. Each :meth:`DatasetSession.env_factory`
still gets a kit of its own with empty caches, so a step's neighbour search runs on the batch it asks
for, exactly as before (a batch of other histories could move SASRec's last float bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from recrepro.agent.env import RecAgentEnv, make_env_factory
from recrepro.agent.prompt import item_views
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.tools import ToolKit
from recrepro.tools.profiles import load_profile_store


@dataclass
class DatasetSession:
    """The benchmark, item views and the tool kit's loaded parts of one dataset (:meth:`open` builds it)."""

    profile: Profile
    root: Path
    dataset: str
    bench: Any
    views: dict[str, Any]
    space: Any  # the SASRec EmbeddingSpace, or None before notebook 02 wrote it
    profiles: Any  # the user-profile store of notebook 03 (empty before it ran)

    @classmethod
    def open(cls, profile: Profile, root: Path | str, dataset: str, bench: Any = None) -> "DatasetSession":
        """Load ``dataset`` (or take its already loaded benchmark ``bench``) with the kit's space and profiles."""
        bench = bench if bench is not None else load_benchmark(profile, dataset, root)
        return cls(profile, Path(root), dataset, bench, item_views(bench.items),
                   ToolKit.load_space(bench, profile, root), load_profile_store(profile, dataset, root))

    def toolkit(self) -> ToolKit:
        """A fresh kit (empty caches) on the loaded space and profiles."""
        return ToolKit.from_benchmark(self.bench, self.profile, self.root, space=self.space, profiles=self.profiles)

    def env_factory(self, samples: pd.DataFrame | None = None) -> Callable[[], RecAgentEnv]:
        """Environments on a fresh kit; with ``samples``, their neighbour search is batched once up front."""
        kit = self.toolkit()
        if samples is not None:
            kit.prepare(kit.instances(samples))
        return make_env_factory(kit.bind, self.profile.agent.max_tool_calls)
