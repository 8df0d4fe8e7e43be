"""One reduced smoke chain (notebooks 00-07) shared by the notebook 05 and 07 tests.

Running the chain once for both saves several CI minutes; each test module checks its own stage.
"""

from __future__ import annotations

import shutil

import pytest

from recrepro.runner import run_chain
from tests.conftest import REPO_ROOT

# Upstream stages as small as they go while every stage still runs for real.
REDUCED_OVERRIDES = {
    "data.max_users": 40, "recbole.epochs": 1, "warmstart.steps": 20, "warmstart.instances": 16,
    "rta.max_steps": 1, "rta.train_instances": 4, "rta.batch_size": 4, "rta.eval_instances": 4,
    "agent.eval_instances": 6, "ppr.train_instances": 8, "ppr.valid_instances": 6, "ppr.batch_size": 2,
    "ppr.max_steps": 1, "sft.steps": 2, "sft.train_instances": 8, "sft.batch_size": 2,
    "sft.max_new_tokens": 48, "sweeps.max_steps": 1, "sweeps.train_instances": 2, "sweeps.batch_size": 2,
    "sweeps.eval_every": 1, "sweeps.valid_instances": 2, "sweeps.test_instances": 3,
    "sweeps.warmstart_steps": 2, "sdpo.steps": 1, "sdpo.train_instances": 4, "llara.steps": 1,
    "llara.train_instances": 4, "rere.steps": 1, "rere.train_instances": 4, "rere.group_size": 2,
}


@pytest.fixture(scope="session")
def reduced_chain(tmp_path_factory):
    """(root, stage results) of the reduced chain 00-07 in a fresh root."""
    root = tmp_path_factory.mktemp("reduced_chain")
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks")
    results = run_chain("smoke", root, stop=7, overrides=REDUCED_OVERRIDES, log=lambda _: None)
    return root, results
