"""The trained LLM baselines' wiring (issues 16, 17): profile sections, the settings each core sees,
which Table 1 rows stay "not run" and why."""

from __future__ import annotations

import pandas as pd
import pytest

from recrepro import paths
from recrepro.baselines.sft import baseline_profile
from recrepro.config import PROFILE_DIR, ConfigError, load_profile
from recrepro.tables import NOT_RUN_MODELS, NOT_RUN_REASONS, not_run_models, not_run_rows, render_markdown, upsert_rows


def test_paper_profile_takes_the_papers_settings():
    paper = load_profile("paper")
    assert [paper.sdpo.learning_rate, paper.llara.learning_rate, paper.rere.learning_rate] == [1e-5] * 3  # PAPER.md 1.6
    assert (paper.sdpo.epochs, paper.llara.epochs, paper.rere.epochs) == (3, 5, 2)  # softmax_dpo.sh, train_*.sh, rere.sh
    assert paper.rere.group_size == 16 and paper.sdpo.group_size is None and paper.llara.group_size is None
    assert all(getattr(load_profile(p), n).enabled for p in ("smoke", "cpu", "paper") for n in ("sdpo", "llara", "rere"))


@pytest.mark.parametrize("key, value, named", [
    ("rere.group_size", 1, "rere.group_size"), ("rere.group_size", None, "rere.group_size"),
    ("sdpo.group_size", 4, "sdpo.group_size"), ("llara.steps", 0, "llara.steps"),
    ("sdpo.train_instances", 0, "sdpo.train_instances"), ("rere.learning_rate", 0.0, "rere.learning_rate"),
])
def test_bad_baseline_settings_are_refused_by_name(key, value, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_profile("smoke", {key: value})


def test_a_missing_baseline_section_is_named(tmp_path):
    text = (PROFILE_DIR / "smoke.yaml").read_text()
    start = text.index("\nllara:")
    end = text.index("\nrere:")
    broken = tmp_path / "no_llara.yaml"
    broken.write_text(text[:start + 1] + text[end + 1:])
    with pytest.raises(ConfigError, match="missing key.*llara"):
        load_profile(broken)


def test_baseline_profile_moves_the_section_into_the_shared_recipe():
    smoke = load_profile("smoke")
    sdpo = baseline_profile(smoke, "sdpo")
    assert (sdpo.sft.steps, sdpo.sft.train_instances, sdpo.sft.learning_rate) == (16, 64, 5e-3)
    assert sdpo.sft.lora_r == smoke.sft.lora_r and sdpo.sft.batch_size == smoke.sft.batch_size
    assert sdpo.rta == smoke.rta  # only ReRe samples groups
    rere = baseline_profile(smoke, "rere")
    assert (rere.rta.group_size, rere.rta.max_steps, rere.rta.train_instances) == (4, 4, 16)
    assert rere.rta.batch_size == smoke.rta.batch_size and rere.sft.learning_rate == 5e-3
    assert smoke.sft.steps == 32 and smoke.rta.max_steps == 6  # the profile itself is untouched


def test_trained_baselines_have_their_own_stage_folders(tmp_path):
    smoke = load_profile("smoke")
    for name in ("sdpo", "llara", "rere"):
        assert paths.stage_dir(smoke, name, "ml-100k", tmp_path) == tmp_path / "runs" / "smoke" / name / "ml-100k"
    with pytest.raises(ValueError, match="unknown training stage"):
        paths.stage_dir(smoke, "dpo", "ml-100k", tmp_path)


def test_not_run_counts_own_names_and_variants():
    assert not_run_models([]) == NOT_RUN_MODELS
    measured = ["SASRec", "ReaRec-ERL", "TALLRec-like (SFT)", "S-DPO", "LLaRA", "ReRe"]
    assert not_run_models(measured) == ["LLMRank", "InteRecAgent"]
    assert not_run_models(["LLaRA"]) == [m for m in NOT_RUN_MODELS if m != "LLaRA"]


def test_smoke_measures_every_trained_baseline_of_the_paper():
    from recrepro.stages.evaluate import measured_models

    smoke = load_profile("smoke")
    assert not_run_models(measured_models(smoke)) == ["LLMRank", "InteRecAgent"]  # GPT-4 rows: need a served model
    off = load_profile("smoke", {"rere.enabled": False, "sft.enabled": False})
    assert not_run_models(measured_models(off)) == ["LLMRank", "InteRecAgent", "TALLRec", "ReRe"]


def test_rendered_not_run_rows_say_why():
    rows = not_run_rows(["ml-100k"], "smoke", [1, 5, 10], ["ReaRec-ERL", "TALLRec-like (SFT)", "S-DPO", "LLaRA"])
    text = render_markdown(rows, "Table 1", [1, 5, 10])
    assert f"not run: {NOT_RUN_REASONS['LLMRank']}; the paper reports no value for this dataset" in text
    assert "| ml-100k | ReRe |" in text and "not run: disabled in this profile" in text


def test_upsert_with_no_rows_rewrites_what_is_there(tmp_path):
    path = tmp_path / "table1.csv"
    first = pd.DataFrame([{"dataset": "d", "model": "SASRec", "source": "measured", "H@1": 0.5},
                          {"dataset": "d", "model": "Chance", "source": "analytic", "H@1": 0.05}])
    upsert_rows(path, first)
    again = upsert_rows(path, [])
    assert list(again["model"]) == ["Chance", "SASRec"] and list(again["H@1"]) == [0.05, 0.5]
