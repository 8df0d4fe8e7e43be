"""RecBole on numpy 2 / torch 2.13 and the SASRec, GRU4Rec, Caser and ReaRec (ERL, PRL) train-export-reload
round trip.

The log is synthetic with a strong sequential rule (item i is followed by item i+1), so a trained
model must beat chance. Each model trains once per module (a few epochs, hidden 16, on CPU).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recrepro.baselines import recbole_compat
from recrepro.baselines import sequential as seq
from recrepro.baselines import sequential_scorer as seq_scorer
from recrepro.config import RecBoleConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 40
HISTORY_MAX = 10
RECBOLE_LITTER = ("log", "log_tensorboard", "saved", "checkpoints", "recbole_data")
EXPORT_FILES = {
    seq_scorer.WEIGHTS_FILE, seq_scorer.ITEM_EMBEDDINGS_FILE, seq_scorer.ITEM_IDS_FILE, seq_scorer.USER_IDS_FILE, seq_scorer.CONFIG_FILE,
}


def _item(i: int) -> str:
    return f"i{i % N_ITEMS}"


def pattern_log(n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each user walks i, i+1, i+2, ... (mod 40) from a random start, 8 to 13 steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(8, 14))
        rows += [(f"u{u}", _item(start + k), 4.0, 1_000_000 + 1_000 * u + 10 * k) for k in range(length)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    log["rating"] = log["rating"].astype("float32")
    return log


def probe_set(n: int = 40, seed: int = 1) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """Held-out histories of the rule, 20 candidates each with the true next item first."""
    rng = np.random.default_rng(seed)
    histories, candidates, users = [], [], []
    for row in range(n):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(2, 8))
        histories.append([_item(start + k) for k in range(length)])
        target = (start + length) % N_ITEMS
        others = [i for i in rng.permutation(N_ITEMS) if i != target][:19]
        candidates.append([_item(target)] + [_item(i) for i in others])
        users.append(f"u{row}" if row % 2 else f"new{row}")  # half known, half unknown users
    return histories, candidates, users


def tiny_cfg(model_name: str, epochs: int) -> RecBoleConfig:
    return RecBoleConfig(
        models=[model_name], epochs=epochs, hidden_size=16, n_layers=1, n_heads=2, dropout=0.1,
        learning_rate=0.01, train_batch_size=64, eval_batch_size=256, stopping_step=10, loss_type="CE",
    )


EPOCHS = {"SASRec": 3, "GRU4Rec": 3, "Caser": 2, "ReaRec-ERL": 3, "ReaRec-PRL": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fit every model with the current directory set to an empty folder; export each."""
    root = tmp_path_factory.mktemp("sequential")
    cwd = root / "cwd"
    cwd.mkdir()
    repo_before = {name for name in RECBOLE_LITTER if (REPO_ROOT / name).exists()}
    log = pattern_log()
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for name in seq.SUPPORTED_MODELS:
            fitted = seq.fit_sequential(name, log, tiny_cfg(name, EPOCHS[name]), HISTORY_MAX, 7, root / "work" / name)
            export_dir = fitted.export(root / "out" / name)
            runs[name] = (fitted, export_dir)
    return {"runs": runs, "root": root, "cwd": cwd, "repo_before": repo_before}


def test_compat_makes_config_work_on_numpy2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=999"])
    recbole_compat.apply()  # idempotent
    from recbole.config import Config

    probe = {"data_path": str(tmp_path), "gpu_id": "", "train_neg_sample_args": None}
    config = Config(model="SASRec", dataset="recrepro_probe", config_dict=probe)
    assert np.lib.NumpyVersion(np.__version__) >= "2.0.0"
    assert np.float is np.float64 and np.int is np.int_  # the aliases RecBole uses at run time
    assert config["epochs"] != 999  # the command line does not leak into RecBole
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"  # RecBole's device set-up left it alone
    assert config["device"] == torch.device("cpu")
    assert not torch.is_anomaly_enabled()  # sine.py's global switch was undone
    assert "ray" not in sys.modules and "recbole.quick_start" not in sys.modules
    assert not any(tmp_path.iterdir())


def test_nothing_is_written_outside_work_dir(trained: dict) -> None:
    assert not any(trained["cwd"].iterdir())
    repo_after = {name for name in RECBOLE_LITTER if (REPO_ROOT / name).exists()}
    assert repo_after == trained["repo_before"]
    work = trained["root"] / "work" / "SASRec"
    assert (work / "recbole_data" / "recrepro_sasrec" / "recrepro_sasrec.inter").is_file()
    assert (work / "log_tensorboard").is_dir()
    assert not list(work.rglob("*.pth"))  # no RecBole checkpoint is ever written


@pytest.mark.parametrize("name", seq.SUPPORTED_MODELS)
def test_export_is_plain_files(trained: dict, name: str) -> None:
    from safetensors import safe_open

    fitted, export_dir = trained["runs"][name]
    assert {p.name for p in export_dir.iterdir()} == EXPORT_FILES
    for path in export_dir.iterdir():
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # neither pickle nor torch zip
        if path.suffix == ".json":
            json.loads(raw)
        else:
            header_len = int.from_bytes(raw[:8], "little")
            json.loads(raw[8:8 + header_len])  # a safetensors header, nothing executable
    config = json.loads((export_dir / seq_scorer.CONFIG_FILE).read_text())
    item_ids = json.loads((export_dir / seq_scorer.ITEM_IDS_FILE).read_text())
    assert config["model"] == name and config["max_seq_length"] == HISTORY_MAX
    assert config["n_items"] == len(item_ids) == N_ITEMS + 1 and item_ids[0] == seq_scorer.PAD_TOKEN
    assert config["training"]["epochs_run"] == EPOCHS[name]
    assert config["training"]["best_valid_score"] is not None
    with safe_open(str(export_dir / seq_scorer.ITEM_EMBEDDINGS_FILE), "pt") as handle:
        assert handle.get_tensor("item_embedding").shape == (N_ITEMS + 1, 16)
    if name == "Caser":
        assert {"nv", "nh", "reg_weight"} <= set(config["params"])


@pytest.mark.parametrize("name", seq.SUPPORTED_MODELS)
def test_reloaded_model_scores_exactly_like_the_trained_one(trained: dict, name: str) -> None:
    fitted, export_dir = trained["runs"][name]
    histories, candidates, users = probe_set()
    in_memory = fitted.scorer()
    reloaded = seq_scorer.load_sequential(export_dir)
    before = in_memory.score_candidates(histories, candidates, users, batch_size=16)
    after = reloaded.score_candidates(histories, candidates, users, batch_size=16)
    assert before.dtype == np.float32 and before.shape == (len(histories), 20)
    assert np.array_equal(before, after)
    assert np.array_equal(in_memory.sequence_representations(histories), reloaded.sequence_representations(histories))
    ids_a, emb_a = in_memory.item_embeddings()
    ids_b, emb_b = reloaded.item_embeddings()
    assert ids_a == ids_b and len(ids_a) == N_ITEMS and np.array_equal(emb_a, emb_b)


@pytest.mark.parametrize("name", seq.SUPPORTED_MODELS)
def test_scores_agree_with_recbole_full_sort_predict(trained: dict, name: str) -> None:
    """Our encoding of histories is RecBole's: compare with the model's own all-item scores."""
    from recbole.data.interaction import Interaction

    fitted, _ = trained["runs"][name]
    histories, _, _ = probe_set(n=8)
    users = [f"u{k}" for k in range(8)]  # known users: Caser uses their own embedding
    scorer = fitted.scorer()
    all_items = fitted.item_ids[1:]
    ours = scorer.score_candidates(histories, [all_items] * len(histories), users)
    seq_ids = torch.zeros((len(histories), HISTORY_MAX), dtype=torch.long)
    for row, history in enumerate(histories):
        seq_ids[row, : len(history)] = torch.tensor([fitted.item_ids.index(i) for i in history])
    batch = Interaction({
        "item_id_list": seq_ids,
        "item_length": torch.tensor([len(h) for h in histories]),
        "user_id": torch.tensor([fitted.user_ids.index(u) for u in users]),
    })
    with torch.no_grad():
        theirs = fitted.model.full_sort_predict(batch).numpy()[:, 1:]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_unknown_items_empty_histories_and_caps(trained: dict) -> None:
    scorer = seq_scorer.load_sequential(trained["runs"]["SASRec"][1])
    long_history = [_item(k) for k in range(15)]
    scores = scorer.score_candidates(
        [long_history, long_history[-HISTORY_MAX:], ["zz", *long_history[-3:], "yy"], long_history[-3:], ["zz"], []],
        [["i15", "nope", "i3"]] * 6,
    )
    assert scores.shape == (6, 3) and scores.dtype == np.float32
    assert np.all(scores[:, 1] == -np.inf) and np.all(np.isfinite(scores[:, [0, 2]]))
    assert np.array_equal(scores[0], scores[1])  # only the last max_seq_length items count
    assert np.array_equal(scores[2], scores[3])  # unknown history items are dropped
    assert np.all(scores[4:, [0, 2]] == 0.0)  # nothing known left: all scores equal
    reps = scorer.sequence_representations([long_history, []])
    assert reps.shape == (2, 16) and reps.dtype == np.float32 and not reps[1].any()
    with pytest.raises(ValueError, match="same length"):
        scorer.score_candidates([["i1"], ["i2"]], [["i1"], ["i1", "i2"]])


def test_caser_unknown_users_get_the_mean_user(trained: dict) -> None:
    scorer = seq_scorer.load_sequential(trained["runs"]["Caser"][1])
    history, cands = [["i1", "i2", "i3"]], [["i4", "i9"]]
    unknown = scorer.score_candidates(history, cands, ["never-seen"])
    assert np.array_equal(unknown, scorer.score_candidates(history, cands, None))
    assert not np.array_equal(unknown, scorer.score_candidates(history, cands, ["u3"]))


def test_sasrec_learns_the_sequential_rule(trained: dict) -> None:
    histories, candidates, _ = probe_set(n=100, seed=5)
    scores = seq_scorer.load_sequential(trained["runs"]["SASRec"][1]).score_candidates(histories, candidates)
    top1 = float(np.mean(scores.argmax(axis=1) == 0))  # the true next item is candidate 0
    assert top1 > 0.3, f"top-1 {top1:.2f} is not clearly above chance (0.05)"


def test_train_sequential_is_reproducible_and_keeps_caller_rng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    log, cfg = pattern_log(n_users=30), tiny_cfg("GRU4Rec", 1)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = seq.train_sequential("GRU4Rec", log, cfg, HISTORY_MAX, 11, tmp_path / "w1", tmp_path / "o1")
    assert torch.equal(torch.rand(3), expected_draw)  # RecBole's reseeding did not leak out
    second = seq.train_sequential("GRU4Rec", log, cfg, HISTORY_MAX, 11, tmp_path / "w2", tmp_path / "o2")
    assert first["epochs_run"] == 1 and first["export_dir"] == str(tmp_path / "o1" / "GRU4Rec")
    assert first["best_valid_score"] == second["best_valid_score"]
    weights = [Path(run["export_dir"]) / seq_scorer.WEIGHTS_FILE for run in (first, second)]
    assert weights[0].read_bytes() == weights[1].read_bytes()  # bit-identical on the same machine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o1", "o2", "w1", "w2"]


def test_bad_inputs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sequential model"):
        seq.train_sequential("BERT4Rec", pattern_log(5), tiny_cfg("SASRec", 1), 10, 0, tmp_path, tmp_path)
    bad = pattern_log(5)
    bad.loc[0, "item_id"] = "a\tb"
    with pytest.raises(ValueError, match="tab or newline"):
        seq.fit_sequential("SASRec", bad, tiny_cfg("SASRec", 1), 10, 0, tmp_path)
