"""The data stage end to end on ml-100k (subsampled): determinism, manifests, atomicity, leakage."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recrepro.baselines.simple import popularity_scores
from recrepro.data.movielens import load_ml100k
from recrepro.data.pipeline import dataset_dir, load_benchmark, prepare_dataset
from recrepro.data.schema import DataError, SAMPLE_COLUMNS
from recrepro.io import ManifestError, sha256_file
from recrepro.stages.data import run_data
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from recrepro.config import load_profile

    profile = load_profile("smoke", {"data.max_users": 40})
    root = tmp_path_factory.mktemp("run")
    run_data(profile, root)
    return profile, root


def test_artifacts_schema_and_stats(built):
    profile, root = built
    bench = load_benchmark(profile, "ml-100k", root)
    for split, frame in bench.samples.items():
        assert list(frame.columns) == list(SAMPLE_COLUMNS)
        assert (frame["split"] == split).all() and len(frame) > 0
    stats = pd.read_csv(profile.results_dir(root) / "dataset_stats.csv")
    row = stats.iloc[0]
    assert row["users"] == 40 and row["profile"] == profile.run.name and profile.run.name.startswith("smoke+")
    assert row["samples_train"] + row["samples_valid"] + row["samples_test"] == sum(len(f) for f in bench.samples.values())
    for column in ("sparsity", "mean_history_length", "paper_users", "paper_items", "paper_interactions"):
        assert column in stats.columns


def test_same_seed_gives_byte_identical_artifacts_across_processes(built, tmp_path):
    profile, root = built
    code = ("import sys; from recrepro.config import load_profile; from recrepro.data.pipeline import prepare_dataset;"
            "prepare_dataset(load_profile('smoke', {'data.max_users': 40}), 'ml-100k', sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO_ROOT,
                   env={"PYTHONHASHSEED": "123", "PATH": ""})
    first = json.loads((dataset_dir(profile, "ml-100k", root) / "manifest.json").read_text())
    second = json.loads((dataset_dir(profile, "ml-100k", tmp_path) / "manifest.json").read_text())
    assert first["files"] == second["files"]
    assert set(first["files"]) >= {"samples_train.parquet", "samples_valid.parquet", "samples_test.parquet"}


def test_other_seed_gives_other_candidates(built, tmp_path):
    from recrepro.config import load_profile

    profile, root = built
    other = load_profile("smoke", {"data.max_users": 40, "run.seed": 99})
    prepare_dataset(other, "ml-100k", tmp_path)
    a = load_benchmark(profile, "ml-100k", root).samples["test"]["candidates"].tolist()
    b = load_benchmark(other, "ml-100k", tmp_path).samples["test"]["candidates"].tolist()
    assert a != b


def test_tampered_artifact_is_refused(built, tmp_path):
    import shutil

    profile, root = built
    copy = tmp_path / "copy"
    shutil.copytree(profile.run_dir(root), copy / "runs" / profile.run.name)
    target = dataset_dir(profile, "ml-100k", copy) / "samples_test.parquet"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ManifestError, match="samples_test.parquet: SHA-256 .* does not match"):
        load_benchmark(profile, "ml-100k", copy)


def test_changed_config_is_refused(built):
    from recrepro.config import load_profile

    profile, root = built
    changed = load_profile("smoke", {"data.max_users": 40, "data.history_max": 5, "run.name": profile.run.name})
    with pytest.raises(DataError, match="different data config"):  # same run folder (named), other data config
        load_benchmark(changed, "ml-100k", root)


def test_failed_stage_leaves_previous_artifacts_intact(built, monkeypatch):
    import recrepro.data.pipeline as pipeline

    profile, root = built
    folder = dataset_dir(profile, "ml-100k", root)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(profile, "ml-100k", root)
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    load_benchmark(profile, "ml-100k", root)


def test_mostpop_uses_only_the_past_of_the_training_period(built):
    profile, root = built
    bench = load_benchmark(profile, "ml-100k", root)
    samples = pd.concat([bench.samples["train"].tail(50), bench.samples["test"].head(50)])
    base = popularity_scores(samples, bench.interactions, bench.valid_start_time)
    for row, (_, s) in enumerate(samples.iterrows()):
        cutoff = min(s["target_time"], bench.valid_start_time)
        # deleting every interaction at or after the cutoff changes nothing for this sample
        past = bench.interactions[bench.interactions["timestamp"] < cutoff]
        again = popularity_scores(samples.iloc[[row]], past, bench.valid_start_time)
        assert np.array_equal(again[0], base[row])


def test_ml100k_bad_input_names_file_and_line(tmp_path):
    from recrepro.data.movielens import packaged_dir

    src = packaged_dir()
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        (tmp_path / name).write_text((src / name).read_text())
    lines = (tmp_path / "ml-100k.inter").read_text().splitlines()
    lines[5] = "196\t242\tthree\t881250949"
    (tmp_path / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ml-100k.inter:6: field 'rating' is not a number"):
        load_ml100k(tmp_path)
    lines[5] = "196\t242"
    (tmp_path / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ml-100k.inter:6: expected 4 tab-separated fields, got 2"):
        load_ml100k(tmp_path)
    (tmp_path / "ml-100k.user").write_text("user_id:token\tage:token\n")
    (tmp_path / "ml-100k.inter").write_text((src / "ml-100k.inter").read_text())
    with pytest.raises(DataError, match=r"ml-100k.user:1: header lacks field"):
        load_ml100k(tmp_path)
    (tmp_path / "ml-100k.item").unlink()
    with pytest.raises(DataError, match="ml-100k.item: file missing"):
        load_ml100k(tmp_path)


def test_ml100k_packaged_copy_loads():
    interactions, items, users = load_ml100k()
    assert len(interactions) == 100_000 and len(items) == 1682 and len(users) == 943
    assert items.set_index("item_id").loc["1", "title"] == "Toy Story (1995)"
    assert items.set_index("item_id").loc["1", "categories"] == "Animation|Children's|Comedy"
    assert interactions["timestamp"].dtype == np.int64
