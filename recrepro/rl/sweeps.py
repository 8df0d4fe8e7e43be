"""The sweeps behind Figures 4 and 5 (PAPER.md 1.6 [N]): TIRR-RTA runs over the group size G and over
the backbone size (then PPR on each backbone's policy), each scored on the same test subset.

Every point is a full RTA run (:func:`recrepro.rl.rta.run_variant`) with the profile's ``sweeps``
section laid over ``rta`` and ``agent``: only G or the backbone differ. A point lives in
``runs/<profile>/sweeps/<dataset>/<name>/`` with test row ``sweep <name>`` (``sweep <name>+PPR`` when
``sweeps.backbone_ppr`` [G] adds stage 2), never in Table 1/2; results go to
``results/<profile>/fig4_group_size.csv`` and ``fig5_backbone_size.csv``. Smoke numbers show the
machinery, never the paper's trend.

Details (layout, PPR on Figure 5, warm start at smoke size): docs/internals.md, "rl/sweeps.py"; smoke
budget: docs/measurements.md; GPU commands: docs/gpu.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from recrepro import paths
from recrepro.agent.card import load_eval_cards
from recrepro.config import Profile
from recrepro.io import write_csv_split
from recrepro.metrics import metric_names
from recrepro.models import TINY_PREFIX, ModelNotBuilt, is_tiny_name, tiny_size_of
from recrepro.rl import grpo, ppr, rta
from recrepro.rl.rta import run_variant

SWEEPS = ("group_size", "backbone")
RESULT_STEMS = {"group_size": "fig4_group_size", "backbone": "fig5_backbone_size"}
RESULT_COLUMNS = ("profile", "dataset", "sweep", "name", "stage", "backbone", "parameters", "group_size", "metric",
                  "value", "lo", "hi", "n", "valid_share", "wall_s_train", "skipped")
TIMING_COLUMNS = ("wall_s_train",)  # written to <stem>_timings.csv, not into the figure's table (issue 15)


@dataclass(frozen=True)
class SweepPoint:
    """One RTA run of a sweep: which backbone and which group size."""

    backbone: str
    group_size: int

    @property
    def name(self) -> str:
        """Folder and row name, e.g. ``tiny-qwen3-s-G4`` or ``Qwen3-8B-G8``."""
        return f"{self.backbone.rstrip('/').rsplit('/', 1)[-1]}-G{self.group_size}"


def canonical_backbone(name: str) -> str:
    """``tiny-qwen3`` and ``tiny-qwen3-s`` are one model (and one warm-start cache): name it one way."""

    return f"{TINY_PREFIX}-{tiny_size_of(name)}" if is_tiny_name(name) else name


def sweep_dataset(profile: Profile) -> str:
    dataset = profile.sweeps.dataset or profile.data.datasets[0]
    if dataset not in profile.data.datasets:
        raise ValueError(f"sweeps.dataset: {dataset!r} is not one of data.datasets {profile.data.datasets}")
    return dataset


def sweep_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/sweeps/<dataset>/``."""
    return paths.stage_dir(profile, "sweeps", dataset, root)


def sweep_points(profile: Profile) -> dict[str, list[SweepPoint]]:
    """Figure 4's points (G values on the profile's backbone) and Figure 5's (backbones at one G)."""
    cfg = profile.sweeps
    if not cfg.group_sizes or not cfg.backbones:
        raise ValueError("sweeps.group_sizes and sweeps.backbones must not be empty")
    if any(g < 2 for g in cfg.group_sizes):
        raise ValueError(f"sweeps.group_sizes: a group needs at least 2 rollouts, got {cfg.group_sizes}")
    size_g = cfg.backbone_group_size or profile.rta.group_size
    own = canonical_backbone(profile.agent.model_name_or_path)
    return {"group_size": [SweepPoint(own, g) for g in cfg.group_sizes],
            "backbone": [SweepPoint(canonical_backbone(b), size_g) for b in cfg.backbones]}


def point_profile(profile: Profile, point: SweepPoint) -> Profile:
    """The profile of one sweep run: ``sweeps`` over ``rta``/``agent``, the point's G and backbone."""
    cfg = profile.sweeps
    rta = dataclasses.replace(profile.rta, group_size=point.group_size, max_steps=cfg.max_steps,
                              train_instances=cfg.train_instances, batch_size=cfg.batch_size or profile.rta.batch_size,
                              eval_every=cfg.eval_every, eval_instances=cfg.valid_instances)
    agent = dataclasses.replace(profile.agent, model_name_or_path=point.backbone, eval_instances=cfg.test_instances)
    # PPR of a Figure 5 point (sweeps.backbone_ppr) mines and trains at the sweep's sizes too.
    ppr = dataclasses.replace(profile.ppr, train_instances=cfg.train_instances, valid_instances=cfg.valid_instances,
                              max_steps=cfg.max_steps, batch_size=cfg.batch_size or profile.ppr.batch_size)
    warmstart = profile.warmstart
    if canonical_backbone(point.backbone) != canonical_backbone(profile.agent.model_name_or_path) \
            and cfg.warmstart_steps is not None:
        # A cheaper warm start for the extra tiny sizes; the main backbone's cached one is untouched.
        warmstart = dataclasses.replace(warmstart, steps=cfg.warmstart_steps)
    return dataclasses.replace(profile, rta=rta, agent=agent, warmstart=warmstart, ppr=ppr)


def count_parameters(model_dir: Path | str) -> int:
    """Parameters stored in a saved model's safetensors files (tied weights once), read from headers."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files to count parameters from")
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                size = 1
                for dim in shape:
                    size *= dim
                total += size
    return total


def row_name(point: SweepPoint, stage: str = "RTA") -> str:
    """The test row (and evaluation card) of a point: ``sweep <name>`` or ``sweep <name>+PPR``."""
    return f"sweep {point.name}" + ("" if stage == "RTA" else "+PPR")


def neighbour_pairs(points: dict[str, list[SweepPoint]]) -> tuple[tuple[str, str, str], ...]:
    """(label, row, neighbour's row) for each point against the previous one of its sweep: each G against
    the next smaller G, each backbone against the previous (smaller) one in the profile's order."""
    def short(point: SweepPoint) -> str:
        return point.backbone.rstrip("/").rsplit("/", 1)[-1]

    sizes = sorted(points.get("group_size", []), key=lambda p: p.group_size)
    backbones = points.get("backbone", [])
    return (*((f"G={b.group_size} vs G={a.group_size}", row_name(b), row_name(a)) for a, b in zip(sizes, sizes[1:])),
            *((f"{short(b)} vs {short(a)}", row_name(b), row_name(a)) for a, b in zip(backbones, backbones[1:])))


def run_point(profile: Profile, root: Path | str, dataset: str, point: SweepPoint, force: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or skip, when its stamp is unchanged) and evaluate one sweep point (stage 1)."""

    out_dir = sweep_dir(profile, root, dataset) / point.name
    sized = point_profile(profile, point)
    rta.build_starting_model(sized, root)  # its backbone's start (and warm start) when not built yet
    result = run_variant(sized, root, dataset, "tirr", force=force, log=log, out_dir=out_dir,
                         row_name=row_name(point))
    row = next(r for r in result["rows"] if r["model"] == row_name(point))
    return {"row": row, "parameters": count_parameters(result["final"]), "skipped": bool(result["skipped"]),
            "wall_s_train": result.get("wall_s_train"), "valid_share": _valid_share(profile, root, dataset, point),
            "final": str(result["final"]), "stage": "RTA"}


def run_point_ppr(profile: Profile, root: Path | str, dataset: str, point: SweepPoint, stage1: dict[str, Any],
                  force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 2 (PPR) on a point's stage-1 policy, in ``<point>/ppr/`` (skipped when unchanged)."""

    folder = sweep_dir(profile, root, dataset) / point.name / "ppr"
    result = ppr.run_dataset(point_profile(profile, point), root, dataset, force=force, log=log, folder=folder,
                             start=Path(stage1["final"]), row_name=row_name(point, "RTA+PPR"))
    trained = [r for r in result["rounds"] if r.get("trained")]
    return {"row": result["rows"][0], "parameters": stage1["parameters"], "skipped": bool(result["skipped"]),
            "wall_s_train": sum(r.get("wall_s") or 0.0 for r in trained) if trained else 0.0,
            "valid_share": _valid_share(profile, root, dataset, point, "RTA+PPR"), "final": result["final"],
            "stage": "RTA+PPR", "pairs": {split: stats.get("pairs") for split, stats in
                                          result["rounds"][0]["mining"].items()}}


def _valid_share(profile: Profile, root: Path | str, dataset: str, point: SweepPoint,
                 stage: str = "RTA") -> float | None:
    """Share of valid test answers, from the evaluation card the run wrote (None when absent)."""

    card = load_eval_cards(profile.results_dir(root)).get(f"{dataset}/{row_name(point, stage)}")
    return None if card is None else card.get("valid_share")


def result_rows(profile: Profile, dataset: str, sweep: str, point: SweepPoint, run: dict[str, Any]) -> list[dict]:
    """Long-format rows (one per metric) of one point and stage."""
    row = run["row"]
    base = {"profile": profile.run.name, "dataset": dataset, "sweep": sweep, "name": point.name,
            "stage": run.get("stage", "RTA"), "backbone": point.backbone, "parameters": run["parameters"],
            "group_size": point.group_size}
    tail = {"n": int(row["n"]), "valid_share": run["valid_share"], "wall_s_train": run["wall_s_train"],
            "skipped": run["skipped"]}
    return [{**base, "metric": m, "value": float(row[m]), "lo": row.get(f"{m}_lo"), "hi": row.get(f"{m}_hi"), **tail}
            for m in metric_names(profile.eval.ks) if m in row]


def write_results(profile: Profile, root: Path | str, sweep: str, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    path = profile.results_dir(root) / f"{RESULT_STEMS[sweep]}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_split(path, frame, list(TIMING_COLUMNS), ["dataset", "sweep", "name", "stage", "metric"])
    return frame


def adopt_main_policy(profile: Profile, root: Path | str, dataset: str, point: SweepPoint) -> bool:
    """Copy the main stage-1 TIRR policy into ``point``'s folder when the point IS the main run.

    A point whose backbone, G, steps, sizes and start model equal notebook 04's TIRR run has the
    same training stamp; retraining it would repeat the same deterministic work. Its training log
    is copied beside it. Returns whether the policy was adopted.
    """
    import shutil


    if canonical_backbone(point.backbone) != canonical_backbone(profile.agent.model_name_or_path):
        return False  # another backbone: never the main run (and its warm start is not built here)
    folder = sweep_dir(profile, root, dataset) / point.name
    main = rta.variant_dir(profile, root, dataset, "tirr") / "final"
    sized = point_profile(profile, point)
    try:
        start = rta.starting_model(sized, root)
    except ModelNotBuilt:
        return False  # its warm start differs from the main run's (sweeps.warmstart_steps)
    stamp = rta.config_stamp(sized, "tirr", start, dataset)
    if (folder / "final").exists() or not grpo.finished_policy(main, stamp):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(main, folder / "final")
    log_path = rta.train_log_path(profile, root, dataset, "tirr")
    if log_path.is_file():
        shutil.copy2(log_path, folder / "train_log.csv")
    return True

