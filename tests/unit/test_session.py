"""The per-dataset session (issue 13): one load of the benchmark, SASRec space and profile store per dataset,
environments that answer exactly as the per-step ToolKit they replace, and kits that share no cache."""

from __future__ import annotations

from recrepro.agent.env import make_env_factory
from recrepro.agent.session import DatasetSession
from recrepro.config import load_profile
from recrepro.rl.grpo import plain
from recrepro.rl.rta import ROW_COLUMNS
from recrepro.stages.data import run_data
from recrepro.tools import ToolKit

TOOL_CALLS = ("get_user_profile", "candidates_analyze", "get_session_behavior", "get_rating_behavior",
              "get_similar_users")


def _answers(factory, row):
    env = factory()
    env.reset(**{k: plain(row[k]) for k in ROW_COLUMNS})
    return [getattr(env, name)() for name in TOOL_CALLS]


def test_session_environments_answer_as_the_per_step_toolkit(tmp_path):
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40})
    run_data(profile, tmp_path)
    session = DatasetSession.open(profile, tmp_path, "ml-100k")
    samples = session.bench.samples["test"].head(6)
    kit = ToolKit.from_benchmark(session.bench, profile, tmp_path)  # a kit that loads its own parts
    kit.prepare(kit.instances(samples))
    before = make_env_factory(kit.bind, profile.agent.max_tool_calls)
    now = session.env_factory(samples)
    for row in samples.to_dict("records"):
        assert _answers(now, row) == _answers(before, row)
    assert set(session.views) == set(session.bench.items["item_id"].astype(str))


def test_each_factory_gets_a_kit_of_its_own(tmp_path):
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40})
    run_data(profile, tmp_path)
    session = DatasetSession.open(profile, tmp_path, "ml-100k")
    first, second = session.toolkit(), session.toolkit()
    assert first is not second and first._user_cache is not second._user_cache
    assert first.space is second.space  # loaded once (None here: notebook 02 has not run)
