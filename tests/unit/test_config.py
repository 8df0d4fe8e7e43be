"""Profiles load into typed objects; unknown, missing or mistyped keys are clear errors."""

from __future__ import annotations

from pathlib import Path

import datetime

import pytest
import yaml

from recrepro.config import PROFILE_DIR, ConfigError, load_profile


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    mutate(raw)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_both_profiles_load():
    smoke, paper = load_profile("smoke"), load_profile("paper")
    assert smoke.data.datasets == ["ml-100k"] and smoke.data.source == "movielens"
    assert paper.data.datasets == ["CDs_and_Vinyl", "Musical_Instruments", "Office_Products", "Video_Games"]
    # PAPER.md 1.1 / 1.4 values in the paper profile
    assert paper.data.history_max == 10 and paper.data.n_candidates == 20
    assert paper.data.split_ratios == [0.8, 0.1, 0.1]
    assert (paper.rta.group_size, paper.rta.epochs, paper.rta.batch_size) == (8, 3, 64)
    assert paper.rta.learning_rate == 1e-6 and paper.agent.temperature == 0.6
    assert paper.agent.max_new_tokens == 6144 and paper.agent.max_tool_calls == 10
    assert (paper.reward.invalid, paper.reward.miss, paper.reward.first_with_tool_bonus) == (-1.0, -0.5, 0.1)
    assert paper.agent.model_name_or_path == "Qwen/Qwen3-4B-Instruct-2507"


def test_every_paper_value_carries_a_mark():
    text = (PROFILE_DIR / "paper.yaml").read_text().splitlines()
    for key in ("history_max", "n_candidates", "split_ratios", "group_size", "learning_rate:", "temperature",
                "max_new_tokens", "invalid:", "miss:", "first_with_tool_bonus", "window_start"):
        line = next(l for l in text if key in l)
        assert any(mark in line for mark in ("[P]", "[N]", "[S]", "[G]")), line


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = _write(tmp_path, lambda raw: raw["data"].__setitem__("histroy_max", 5))
    with pytest.raises(ConfigError, match=r"unknown key 'data.histroy_max'.*did you mean 'data.history_max'"):
        load_profile(path)


def test_unknown_section(tmp_path):
    path = _write(tmp_path, lambda raw: raw.__setitem__("dta", {}))
    with pytest.raises(ConfigError, match="unknown key 'dta'"):
        load_profile(path)


def test_missing_key(tmp_path):
    path = _write(tmp_path, lambda raw: raw["data"].pop("seed", None) or raw["run"].pop("seed"))
    with pytest.raises(ConfigError, match="missing key.*run.seed"):
        load_profile(path)


def test_wrong_type(tmp_path):
    path = _write(tmp_path, lambda raw: raw["data"].__setitem__("history_max", "ten"))
    with pytest.raises(ConfigError, match="data.history_max: expected an integer"):
        load_profile(path)


def test_unknown_dataset_source_and_name(tmp_path):
    path = _write(tmp_path, lambda raw: raw["data"].__setitem__("datasets", ["ml-1m"]))
    with pytest.raises(ConfigError, match="movielens source only provides 'ml-100k'"):
        load_profile(path)
    path = _write(tmp_path, lambda raw: raw["data"].__setitem__("source", "netflix"))
    with pytest.raises(ConfigError, match="unknown source 'netflix'"):
        load_profile(path)


def test_bad_split_ratios(tmp_path):
    path = _write(tmp_path, lambda raw: raw["data"].__setitem__("split_ratios", [0.8, 0.1]))
    with pytest.raises(ConfigError, match="split_ratios"):
        load_profile(path)


def test_overrides_and_unknown_override():
    assert load_profile("smoke", {"data.max_users": 7}).data.max_users == 7
    with pytest.raises(ConfigError, match="unknown key 'max_user'"):
        load_profile("smoke", {"data.max_user": 7})


def test_unknown_profile_name():
    with pytest.raises(ConfigError, match="known profiles"):
        load_profile("nonexistent")


def test_command_line_overrides_read_yaml_and_exponent_floats():
    from recrepro.overrides import parse_overrides

    parsed = parse_overrides(["rta.learning_rate=2e-4", "data.max_users=40", "run.device=cpu",
                              "data.window_end=null", "rta.use_lora=true", "agent.model_name_or_path=tiny-qwen3-m"])
    assert parsed == {"rta.learning_rate": 2e-4, "data.max_users": 40, "run.device": "cpu",
                      "data.window_end": None, "rta.use_lora": True, "agent.model_name_or_path": "tiny-qwen3-m"}
    assert load_profile("smoke", parse_overrides(["rta.learning_rate=2e-4"])).rta.learning_rate == 2e-4
    for item in ("rta.learning_rate", "=5"):
        with pytest.raises(ConfigError) as error:
            parse_overrides([item])
        assert str(error.value) == f"override {item!r}: expected key=value, e.g. data.max_users=50"
    with pytest.raises(ConfigError, match=r"^override 'data.datasets': '\[a' is not a YAML value \("):
        parse_overrides(["data.datasets=[a"])


def test_vllm_context_is_prompt_plus_completion_and_must_fit_the_backbone():
    """Issue 14: vLLM gets max_model_len = rta.max_prompt_length + rta.max_completion_length (paper: 4,096 +
    6,144), and a profile whose budgets exceed a known backbone's window is refused at load, naming the keys."""
    from recrepro.config import ConfigError, load_profile, model_context

    paper = load_profile("paper")
    assert model_context(paper) == 4096 + 6144
    with pytest.raises(ConfigError, match=r"rta.max_prompt_length \+ rta.max_completion_length = 40961 tokens do not "
                                          r"fit Qwen/Qwen3-1.7B's context of 40960 tokens"):
        load_profile("paper", {"rta.max_prompt_length": 40961 - 6144})
    with pytest.raises(ConfigError, match="rta.eval_batch_size"):
        load_profile("paper", {"rta.eval_batch_size": 0})


def test_the_paper_grpo_config_passes_the_vllm_context():
    from recrepro.config import load_profile
    from recrepro.rl.grpo import build_grpo_config

    config = build_grpo_config(load_profile("paper"), "/tmp/unused", processes=4)
    assert config.vllm_max_model_length == 10240


def test_in_training_validation_is_greedy_and_batched_by_rta_eval_batch_size():
    from recrepro.config import load_profile
    from recrepro.rl.rta import validation_settings

    paper = validation_settings(load_profile("paper"))
    assert (paper.do_sample, paper.batch_size, paper.progress) == (False, 8, False)
    assert validation_settings(load_profile("cpu")).batch_size is None  # CPU: all at once, as before


def test_overrides_name_a_run_of_their_own():
    """Issue 15: a profile loaded with overrides gets ``<name>+<key>`` (order-free), its own run folder and
    tables; naming ``run.name`` explicitly keeps that name."""
    from recrepro.config import override_key

    base = load_profile("smoke")
    a = load_profile("smoke", {"data.max_users": 50, "recbole.epochs": 1})
    b = load_profile("smoke", {"recbole.epochs": 1, "data.max_users": 50})
    assert a.run.name == b.run.name == f"smoke+{override_key({'data.max_users': 50, 'recbole.epochs': 1})}"
    assert len(override_key({"x": 1})) == 8 and override_key({"x": 1}) != override_key({"x": 2})
    assert a.run_dir("r") != base.run_dir("r") and a.results_dir("r").as_posix() == f"r/runs/{a.run.name}/results"
    assert base.results_dir("r").as_posix() == "r/runs/smoke/results" and base.run.name == "smoke"
    assert load_profile("smoke", {"data.max_users": 50, "run.name": "mine"}).run.name == "mine"


# ---------------------------------------------------------------- bad input found in review (issue 15, item 7)

SMOKE = PROFILE_DIR / "smoke.yaml"


def test_set_typos_get_the_did_you_mean_that_yaml_typos_get():
    from recrepro.overrides import parse_overrides

    with pytest.raises(ConfigError) as leaf:
        load_profile("smoke", parse_overrides(["data.max_userz=5"]))
    assert str(leaf.value) == (f"{SMOKE}: override 'data.max_userz': unknown key 'max_userz' "
                               "(did you mean 'data.max_users'?)")
    with pytest.raises(ConfigError) as section:
        load_profile("smoke", {"dat.max_users": 5})
    assert str(section.value) == f"{SMOKE}: override 'dat.max_users': no section 'dat' (did you mean 'data'?)"
    with pytest.raises(ConfigError) as far:
        load_profile("smoke", {"data.zzz": 5})
    assert str(far.value) == f"{SMOKE}: override 'data.zzz': unknown key 'zzz'"  # nothing close: no guess


def test_dates_and_numbers_are_text_for_string_keys(tmp_path):
    from recrepro.overrides import parse_overrides

    parsed = parse_overrides(["data.window_start=2020-01-01", "run.name=007", "agent.model_name_or_path=1e5",
                              "data.window_end=null", "data.max_users=40", "rta.learning_rate=1e-6"])
    assert parsed == {"data.window_start": "2020-01-01", "run.name": "007", "agent.model_name_or_path": "1e5",
                      "data.window_end": None, "data.max_users": 40, "rta.learning_rate": 1e-6}  # others as before
    assert parse_overrides(["data.window_end=2021-06-30T00:00:00"]) == {"data.window_end": "2021-06-30T00:00:00"}
    profile = load_profile("smoke", parsed)
    assert (profile.data.window_start, profile.run.name, profile.agent.model_name_or_path) == ("2020-01-01", "007",
                                                                                                 "1e5")
    # A programmatic override or a profile file: YAML dates and numbers for str keys become their text.
    assert load_profile("smoke", {"data.window_start": datetime.date(2020, 1, 1)}).data.window_start == "2020-01-01"

    def mutate(raw):
        raw["data"]["window_start"], raw["data"]["window_end"] = datetime.date(2020, 1, 1), "2021-01-01"
        raw["run"]["name"], raw["data"]["datasets"] = 7, ["ml-100k"]

    path = _write(tmp_path, mutate)
    assert "window_start: 2020-01-01\n" in path.read_text()  # unquoted: YAML reads a date
    loaded = load_profile(path)
    assert (loaded.data.window_start, loaded.data.window_end, loaded.run.name) == ("2020-01-01", "2021-01-01", "7")
    with pytest.raises(ConfigError, match=r"run.name: expected str, got \['a'\]"):  # a list is still no text
        load_profile("smoke", parse_overrides(["run.name=[a]"]))
    with pytest.raises(ConfigError, match="run.name: expected str, got True"):
        load_profile("smoke", {"run.name": True})


@pytest.mark.parametrize("overrides, message", [
    ({"data.max_users": -5}, "data.max_users: expected a positive number of users, or null for all, got -5"),
    ({"data.max_users": 0}, "data.max_users: expected a positive number of users, or null for all, got 0"),
    ({"eval.ks": [0, 25]}, "eval.ks: every k must be within 1..20 (data.n_candidates), got [0, 25]"),
    ({"eval.ks": [1, 21]}, "eval.ks: every k must be within 1..20 (data.n_candidates), got [1, 21]"),
    ({"data.n_candidates": 5, "agent.affinity_order": 0},
     "eval.ks: every k must be within 1..5 (data.n_candidates), got [1, 5, 10]"),
])
def test_semantic_checks_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_profile("smoke", overrides)
    assert str(error.value) == f"{SMOKE}: {message}"


def test_semantic_checks_accept_the_edges():
    assert load_profile("smoke", {"data.max_users": 1}).data.max_users == 1
    assert load_profile("smoke", {"data.max_users": None}).data.max_users is None
    assert load_profile("smoke", {"eval.ks": [1, 20]}).eval.ks == [1, 20]


def test_a_set_item_without_equals_exits_2_with_a_message(capsys):
    from recrepro.__main__ import main
    from recrepro.overrides import load_cli_profile

    assert main(["plan", "--profile", "smoke", "--set", "data.max_users"]) == 2
    assert capsys.readouterr().err == "error: override 'data.max_users': expected key=value, e.g. data.max_users=50\n"
    assert main(["plan", "--profile", "smoke", "--set", "data.max_userz=5"]) == 2
    assert "(did you mean 'data.max_users'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # the stage CLIs (seeds, rta, ppr, sweeps) load through this
        load_cli_profile("smoke", ["data.max_users"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: override 'data.max_users': expected key=value, e.g. data.max_users=50\n"
    assert load_cli_profile("smoke", ["data.max_users=40"]).data.max_users == 40
