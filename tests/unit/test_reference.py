"""Run stamps, promotion to the committed reference and the comparison against it (issue 15)."""

from __future__ import annotations

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.paths import notebooks_dir, reference_dir
from recrepro.reference import (LLM_TOL, RECBOLE_TOL, compare, compare_rows, config_digest, promote,
                                stamp_results)

PROFILE = load_profile("smoke")
TABLE = ("dataset,model,H@1,H@10,N@10,n,profile,source\n"
         "ml-100k,Chance,0.05,0.5,0.227178,64,smoke,analytic\n"
         "ml-100k,MostPop,0.1,0.6,0.3,64,smoke,measured\n"
         "ml-100k,SASRec,0.2,0.8,0.5,64,smoke,measured\n"
         "ml-100k,trained-R,0.1,0.5,0.25,64,smoke,measured\n"
         "CDs,AgenticRec,0.3,,,,paper,paper\n")


def _write_run(root, table1: str = TABLE, extra: dict[str, str] | None = None):
    results, figures = PROFILE.results_dir(root), PROFILE.figures_dir(root)
    results.mkdir(parents=True)
    figures.mkdir(parents=True)
    files = {"table1.csv": table1, "table2.csv": table1, "table1.md": "# Table 1\n\nProfile: **smoke**.\n",
             "table1.tex": "\\begin{tabular}\n", "dataset_stats.csv": "dataset,users\nml-100k,300\n",
             "significance.md": "# Significance\n\np < 0.001\n", "eval_timings.md": "# times\n",
             "fig4_group_size_timings.csv": "name,wall_s_train\nx,1.5\n", **(extra or {})}
    for name, text in files.items():
        (results / name).write_text(text)
    (figures / "fig4_group_size.png").write_bytes(b"png")
    notebooks = notebooks_dir(PROFILE, root)
    notebooks.mkdir()
    for name in ("00_setup.ipynb", "04_rta.failed.ipynb", ".04_rta.x.tmp.ipynb"):
        (notebooks / name).write_text("{}")
    return results


def test_stamps_are_written_once_and_leave_volatile_files_alone(tmp_path):
    results = _write_run(tmp_path)
    changed = {p.name for p in stamp_results(PROFILE, tmp_path)}
    assert changed == {"table1.csv", "table2.csv", "table1.md", "table1.tex", "dataset_stats.csv", "significance.md"}
    digest = config_digest(PROFILE)
    assert len(digest) == 12
    assert (results / "dataset_stats.csv").read_text() == f"dataset,users,run,config\nml-100k,300,smoke,{digest}\n"
    assert (results / "table1.md").read_text() == f"# Table 1\n\nRun: `smoke` · config `{digest}`\n\nProfile: **smoke**.\n"
    assert (results / "table1.tex").read_text().startswith(f"% Run: smoke · config {digest}\n\\begin{{tabular}}")
    assert (results / "eval_timings.md").read_text() == "# times\n"
    assert stamp_results(PROFILE, tmp_path) == []  # idempotent: a second stamp changes nothing


def test_a_changed_config_gets_another_digest():
    assert config_digest(PROFILE) != config_digest(load_profile("smoke", {"recbole.epochs": 2}))
    assert config_digest(PROFILE) == config_digest(load_profile("smoke"))


def test_promote_copies_outputs_without_timings_and_drops_stale_files(tmp_path):
    _write_run(tmp_path)
    reference = reference_dir(PROFILE, "results", tmp_path)
    reference.mkdir(parents=True)
    (reference / "old_table.csv").write_text("stale\n")
    copied = promote(PROFILE, tmp_path)
    assert "table1.csv" in copied["results"] and copied["figures"] == ["fig4_group_size.png"]
    assert copied["notebooks"] == ["00_setup.ipynb"]  # executed notebooks, not failed or temporary ones
    assert (reference / "notebooks" / "00_setup.ipynb").is_file()
    names = {p.name for p in reference.iterdir()}
    assert "old_table.csv" not in names and "eval_timings.md" not in names
    assert not any("timings" in n for n in names)
    assert (reference / "table1.csv").read_bytes() == (PROFILE.results_dir(tmp_path) / "table1.csv").read_bytes()
    assert compare(PROFILE, tmp_path).match


def test_compare_applies_the_stated_tolerances(tmp_path):
    _write_run(tmp_path)
    promote(PROFILE, tmp_path)
    results = PROFILE.results_dir(tmp_path)
    llm_moved = TABLE.replace("trained-R,0.1,0.5,0.25", f"trained-R,0.1,{0.5 + LLM_TOL / 2},0.25")
    (results / "table1.csv").write_text(llm_moved)
    (results / "significance.md").write_text("# Significance\n\np = 0.002\n")
    within = compare(PROFILE, tmp_path)
    assert within.match, within.report()
    assert any(n.startswith("table1.csv: not byte-identical") for n in within.notes)
    assert any(n.startswith("significance.md differs") and "+p = 0.002" in n for n in within.notes)
    (results / "table1.csv").write_text(TABLE.replace("MostPop,0.1,", "MostPop,0.1000001,"))
    exact = compare(PROFILE, tmp_path)
    assert not exact.match and "('ml-100k', 'MostPop') H@1" in exact.report()
    (results / "table1.csv").write_text(TABLE)
    (results / "dataset_stats.csv").write_text("dataset,users\nml-100k,299\n")
    assert not compare(PROFILE, tmp_path).match  # a deterministic file must be identical
    (results / "dataset_stats.csv").unlink()
    assert "dataset_stats.csv: missing from the run" in compare(PROFILE, tmp_path).report()


def test_compare_refuses_a_run_of_another_config(tmp_path):
    _write_run(tmp_path)
    promote(PROFILE, tmp_path)
    reference = reference_dir(PROFILE, "results", tmp_path) / "table1.csv"
    reference.write_text(reference.read_text().replace(config_digest(PROFILE), "0123456789ab"))
    result = compare(PROFILE, tmp_path)
    assert not result.match and "config differs" in result.report()


def test_compare_rows_flags_each_kind_of_difference():
    index = pd.MultiIndex.from_tuples([("d", "Random"), ("d", "SASRec"), ("d", "trained-R")], names=["dataset", "model"])
    ref = pd.DataFrame({"H@1": [0.5] * 3, "H@5": [0.5] * 3, "N@5": [0.5] * 3, "n": [10] * 3}, index=index)
    assert compare_rows(ref.copy(), ref) == []
    fresh = ref.copy()
    fresh.loc[("d", "Random"), "H@1"] = 0.5 + 1e-6   # exact row: any change counts
    fresh.loc[("d", "SASRec"), "H@5"] = 0.5 + RECBOLE_TOL / 2  # inside the RecBole tolerance
    fresh.loc[("d", "trained-R"), "N@5"] = 0.5 + LLM_TOL * 1.5  # outside the LLM tolerance
    problems = compare_rows(fresh, ref)
    assert len(problems) == 2
    assert problems[0].startswith("('d', 'Random') H@1") and problems[1].startswith("('d', 'trained-R') N@5")
    assert compare_rows(fresh.drop(("d", "SASRec")), ref)[0].startswith("rows differ")
    fresh.loc[("d", "SASRec"), "n"] = 9
    assert any(p == "('d', 'SASRec'): n 9 != 10" for p in compare_rows(fresh, ref))


def test_compare_without_a_reference_is_a_clear_error(tmp_path):
    _write_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no committed reference for 'smoke'"):
        compare(PROFILE, tmp_path)


def test_command_line_exit_codes(tmp_path, capsys):
    from recrepro.__main__ import main

    assert main(["compare", "--profile", "smoke", "--root", str(tmp_path)]) == 2  # no reference yet
    _write_run(tmp_path)
    assert main(["promote", "--profile", "smoke", "--root", str(tmp_path)]) == 0
    assert "reference of 'smoke' updated" in capsys.readouterr().out
    assert main(["compare", "--profile", "smoke", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("MATCH")
    (PROFILE.results_dir(tmp_path) / "dataset_stats.csv").write_text("dataset,users\nml-100k,1\n")
    assert main(["compare", "--profile", "smoke", "--root", str(tmp_path)]) == 1
    assert "NO MATCH" in capsys.readouterr().out
