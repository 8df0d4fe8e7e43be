"""The chain runner's stamps: unchanged stages are skipped, changes re-run what is downstream."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest

from recrepro.config import load_profile, override_key
from recrepro.runner import find_notebooks, run_chain, stage_stamp
from tests.conftest import REPO_ROOT


def _mini_chain(root):
    (root / "notebooks").mkdir()
    for number, body in ((0, "x = 1"), (1, "import pathlib; pathlib.Path(root, 'ran1').touch()")):
        nb = nbformat.v4.new_notebook()
        nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "recrepro": {"sections": ["data"] if number else []}}
        params = nbformat.v4.new_code_cell('profile = "smoke"\nroot = "."\noverrides = {}')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, root / "notebooks" / f"0{number}_step.ipynb")


@pytest.mark.slow
def test_second_run_skips_and_change_reruns_downstream(tmp_path):
    _mini_chain(tmp_path)
    first = run_chain("smoke", tmp_path, log=lambda _: None)
    assert [r.status for r in first] == ["ran", "ran"]
    assert (tmp_path / "ran1").exists()
    assert (tmp_path / "runs" / "smoke" / "notebooks" / "01_step.ipynb").is_file()
    second = run_chain("smoke", tmp_path, log=lambda _: None)
    assert [r.status for r in second] == ["skipped", "skipped"]
    # Same run folder (named explicitly), changed data section: 00 does not read it, so only 01 re-runs.
    changed = run_chain("smoke", tmp_path, overrides={"data.history_max": 5, "run.name": "smoke"}, log=lambda _: None)
    assert [r.status for r in changed] == ["skipped", "ran"]
    forced = run_chain("smoke", tmp_path, start=1, stop=1, force=True, log=lambda _: None)
    assert [(r.notebook, r.status) for r in forced] == [("01_step.ipynb", "ran")]


def test_failed_notebook_names_the_cell_and_keeps_old_output(tmp_path):
    _mini_chain(tmp_path)
    nb = nbformat.read(tmp_path / "notebooks" / "00_step.ipynb", as_version=4)
    nb.cells[1].source = "raise ValueError('bad input in cell')"
    nbformat.write(nb, tmp_path / "notebooks" / "00_step.ipynb")
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="bad input in cell"):
        run_chain("smoke", tmp_path, stop=0, log=lambda _: None)
    assert not (tmp_path / "runs" / "smoke" / "stamps" / "00_step.json").exists()
    assert not (tmp_path / "runs" / "smoke" / "notebooks" / "00_step.ipynb").exists()
    failed = tmp_path / "runs" / "smoke" / "notebooks" / "00_step.failed.ipynb"
    assert "bad input in cell" in failed.read_text()


def test_repo_notebooks_are_thin_and_parameterised():
    for path in find_notebooks(REPO_ROOT):
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(len("".join(c["source"]).splitlines()) <= 25 for c in code), path
        assert not any(c.get("outputs") for c in code), f"{path}: commit notebooks without outputs"
        stage_stamp(path, load_profile("smoke"), "", "")  # declared sections exist
        assert all(cell.get("id") for cell in nb["cells"]), f"{path}: cells need ids (nbformat 4.5)"
        nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_a_stage_hashes_only_the_code_it_reaches():
    """Issue 13: editing one stage's module re-runs that stage and the ones after it (stamps chain),
    not the stages before: each notebook's code hash covers only the modules its imports reach."""
    from recrepro.imports import all_modules, closure, import_graph, notebook_imports

    modules, graph = all_modules(), import_graph()
    used = {nb.name[:2]: closure(notebook_imports(nb, modules), graph)
            for nb in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    assert "recrepro.stages.rta" in used["04"] and "recrepro.rl.grpo" in used["04"]
    assert not any("recrepro.rl.grpo" in used[n] or "recrepro.stages.rta" in used[n] for n in ("00", "01", "02"))
    assert "recrepro.stages.figures" in used["07"] and "recrepro.stages.figures" not in used["04"]
    assert "recrepro.config" in used["00"] and "recrepro" in used["00"]  # packages run their __init__


def test_code_hash_changes_with_a_used_module_only(tmp_path, monkeypatch):
    from recrepro import runner

    package = tmp_path / "recrepro"
    shutil.copytree(runner.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "PACKAGE_DIR", package)
    notebooks = {n: next((REPO_ROOT / "notebooks").glob(f"{n}_*.ipynb")) for n in ("01", "07")}
    before = {n: runner.code_hash(nb) for n, nb in notebooks.items()}
    with open(package / "stages" / "figures.py", "a") as f:
        f.write("\n# an edit\n")
    after = {n: runner.code_hash(nb) for n, nb in notebooks.items()}
    assert after["01"] == before["01"] and after["07"] != before["07"]


def test_saving_outputs_in_lab_keeps_the_stamp(tmp_path):
    """Issue 15: executing and saving a notebook (outputs, counts, metadata) leaves its stamp alone;
    editing a cell's source changes it."""
    _mini_chain(tmp_path)
    path = tmp_path / "notebooks" / "01_step.ipynb"
    profile = load_profile("smoke")
    before = stage_stamp(path, profile, "", "")
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="ran\n")]
    nb.cells[1].execution_count = 7
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}
    nbformat.write(nb, path)
    assert stage_stamp(path, profile, "", "") == before
    nb.cells[1].source += "\nx = 2"
    nbformat.write(nb, path)
    assert stage_stamp(path, profile, "", "") != before


def test_a_root_without_notebooks_is_an_error_naming_the_folder(tmp_path):
    """Issue 15: a wrong root must not be a chain of nothing."""
    folder = tmp_path / "notebooks"
    with pytest.raises(FileNotFoundError) as missing:
        find_notebooks(str(tmp_path))
    assert str(missing.value) == f"{folder}: no such folder; the root must be the repository root, which holds notebooks/"
    folder.mkdir()
    (folder / "setup.ipynb").write_text("{}")  # not numbered: not part of the chain
    (folder / "1_short.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError) as empty:
        find_notebooks(tmp_path)
    assert str(empty.value) == f"{folder}: no NN_*.ipynb notebooks (two digits, '_', a name, e.g. 00_setup.ipynb)"
    with pytest.raises(FileNotFoundError, match="no NN_"):
        run_chain("smoke", tmp_path, log=lambda _: None)
    (folder / "00_setup.ipynb").write_text("{}")
    assert find_notebooks(tmp_path) == [folder / "00_setup.ipynb"]


@pytest.mark.slow
def test_a_run_with_overrides_is_a_run_of_its_own(tmp_path):
    """Issue 15: ``--set data.max_users=50`` runs in ``runs/smoke+<key>/``; the profile's run is untouched."""
    _mini_chain(tmp_path)
    run_chain("smoke", tmp_path, log=lambda _: None)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs" / "smoke").rglob("*"))
    other = run_chain("smoke", tmp_path, overrides={"data.max_users": 50}, log=lambda _: None)
    assert [r.status for r in other] == ["ran", "ran"]
    name = f"smoke+{override_key({'data.max_users': 50})}"
    assert (tmp_path / "runs" / name / "notebooks" / "01_step.ipynb").is_file()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs" / "smoke").rglob("*")) == before


@pytest.mark.slow
def test_tables_a_stage_writes_are_stamped_with_run_and_config(tmp_path):
    """Issue 15: after each notebook the runner stamps its run's tables (reference.stamp_results)."""
    from recrepro.reference import config_digest

    _mini_chain(tmp_path)
    nb = nbformat.read(tmp_path / "notebooks" / "01_step.ipynb", as_version=4)
    nb.cells[1].source = ("from recrepro.config import load_profile\n"
                          "out = load_profile(profile, overrides).results_dir(root)\n"
                          "out.mkdir(parents=True, exist_ok=True)\n"
                          "(out / 't.csv').write_text('a\\n1\\n'); (out / 't.md').write_text('# T\\n\\nbody\\n')")
    nbformat.write(nb, tmp_path / "notebooks" / "01_step.ipynb")
    run_chain("smoke", tmp_path, overrides={"data.max_users": 50}, log=lambda _: None)
    profile = load_profile("smoke", {"data.max_users": 50})
    digest = config_digest(profile)
    assert (profile.results_dir(tmp_path) / "t.csv").read_text() == f"a,run,config\n1,{profile.run.name},{digest}\n"
    assert f"Run: `{profile.run.name}` · config `{digest}`" in (profile.results_dir(tmp_path) / "t.md").read_text()
