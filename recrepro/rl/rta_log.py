"""The stage-1 training log behind Figure 3, and the validation H@10 measured during training.

One CSV row per logging step (``runs/<profile>/rta/train_log.csv``, ``train_log_r.csv`` for the
reasoning-only run), rewritten atomically after every step so an interrupted run leaves a readable
file and a resumed run continues it: training-side means (reward and its components, validity, tool
use, Figure 3a, PAPER.md 1.6; dropped all-negative groups, PAPER.md 1.4) and, every
``rta.eval_every`` steps, H@1, H@10, N@5 and N@10 of greedy rollouts on a fixed validation slice
(Figure 3b).

Details (every column, the validation slice, multi-process runs): docs/internals.md, "rl/rta_log.py".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from recrepro.agent.generators import HFGenerator, RolloutSettings
from recrepro.agent.rollout import AgentTask, RolloutEngine
from recrepro.io import write_text_atomic
from recrepro.metrics import bootstrap_ci, list_metrics
from recrepro.tools import TOOL_NAMES

# TRL / Trainer log key -> our column. The rta/* keys are logged by the reward function and the trainer.
TRAIN_COLUMNS: dict[str, str] = {
    "rta/reward": "reward",
    "rta/reward_ranking": "reward_ranking",
    "rta/reward_invalid": "reward_invalid",
    "rta/reward_tool_bonus": "reward_tool_bonus",
    "rta/valid": "valid_share",
    "rta/tool_calls": "tool_calls_mean",
    "rta/positive_with_tool": "positive_with_tool_share",
    "rta/positive": "positive_share",
    "rta/dropped_group_share": "dropped_group_share",
    "rta/groups_kept": "groups_kept",  # the effective batch after the all-negative drop (PAPER.md 1.4)
    "rta/groups_total": "groups_total",
    "rta/effective_batch": "effective_batch",  # trajectories of the kept groups
    "loss": "loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "completions/mean_length": "completion_tokens_mean",
    "step_time": "step_seconds",
}
TOOL_COLUMNS = {f"rta/calls/{name}": f"calls_{name}" for name in TOOL_NAMES}
EVAL_KS = (1, 5, 10)
EVAL_COLUMNS = ("val_H@1", "val_H@10", "val_N@5", "val_N@10", "val_valid_share", "val_tool_calls",
                "val_H@10_lo", "val_H@10_hi", "val_N@10_lo", "val_N@10_hi")
VAL_CI_REPS = 1000  # [G] bootstrap resamples of the validation interval (Figure 3b's error bars)
VAL_CI_SEED = 7  # [G] fixed, so the interval is a function of the answers only
LOG_COLUMNS = (["step", "epoch", *TRAIN_COLUMNS.values(), *TOOL_COLUMNS.values(), *EVAL_COLUMNS, "wall_s"])


@dataclass
class ValidationSlice:
    """The fixed validation instances evaluated during training, as rollout tasks."""

    tasks: list[AgentTask]
    env_factory: Callable[[], Any]
    settings: RolloutSettings  # greedy, explicit (PAPER.md: eval decoding unknown [G])
    top_k: int
    max_tool_calls: int


def evaluate_slice(model: Any, tokenizer: Any, valid: ValidationSlice, rank: int = 0, world: int = 1,
                   gather: Callable[[list], list] | None = None) -> dict[str, float]:
    """H@K, N@K, valid share and tool calls of ``model`` on the slice (this process's share, gathered)."""
    import torch

    mine = valid.tasks[rank::world]
    engine = RolloutEngine(HFGenerator(model, tokenizer), tokenizer, valid.env_factory, valid.settings,
                           top_k=valid.top_k, max_tool_calls=valid.max_tool_calls,
                           max_context_tokens=getattr(model.config, "max_position_embeddings", None))
    was_training = model.training
    model.eval()
    try:
        # Greedy decoding draws no random numbers, but forking keeps the training RNG untouched regardless.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            records = engine.run(mine, n_samples=1, desc="validation") if mine else []
    finally:
        model.train(was_training)
    rows = [(list(r.answer) if r.answer else None, r.target_index, r.valid, r.n_tool_calls) for r in records]
    if gather is not None:
        rows = gather(rows)
    if not rows:
        return {}
    values = list_metrics([r[0] for r in rows], [r[1] for r in rows], EVAL_KS)
    ci = bootstrap_ci({"H@10": values["H@10"], "N@10": values["N@10"]}, VAL_CI_REPS, VAL_CI_SEED)
    return {"val_H@1": float(np.mean(values["H@1"])), "val_H@10": float(np.mean(values["H@10"])),
            "val_N@5": float(np.mean(values["N@5"])), "val_N@10": float(np.mean(values["N@10"])),
            "val_valid_share": float(np.mean([r[2] for r in rows])),
            "val_tool_calls": float(np.mean([r[3] for r in rows])),
            "val_H@10_lo": ci["H@10"][0], "val_H@10_hi": ci["H@10"][1],
            "val_N@10_lo": ci["N@10"][0], "val_N@10_hi": ci["N@10"][1]}


class RTALogCallback(TrainerCallback):
    """Writes the training log CSV and runs the validation slice every ``eval_every`` steps.

    ``trainer`` is attached after the trainer is built (the callback needs its model and
    accelerator). Rows of a previous, interrupted run up to the resumed step are kept.
    """

    def __init__(self, path: Path | str, valid: ValidationSlice | None, eval_every: int,
                 log: Callable[[str], None] | None = print) -> None:
        self.path = Path(path)
        self.valid = valid
        self.eval_every = max(1, int(eval_every))
        self.trainer: Any = None
        self.rows: dict[int, dict[str, Any]] = {}
        self.began = time.perf_counter()
        self.offset_s = 0.0
        self.evaluated: set[int] = set()
        self.log = log or (lambda _: None)

    # -- helpers --

    def _row(self, step: int) -> dict[str, Any]:
        return self.rows.setdefault(step, {"step": step})

    def _write(self) -> None:
        if self.trainer is not None and not self.trainer.accelerator.is_main_process:
            return
        frame = pd.DataFrame([self.rows[s] for s in sorted(self.rows)]).reindex(columns=LOG_COLUMNS)
        write_text_atomic(self.path, frame.to_csv(index=False, float_format="%.6g"))

    def _evaluate(self, step: int) -> None:
        if self.valid is None or self.trainer is None or step in self.evaluated:
            return
        from trl.models import unwrap_model_for_generation

        trainer = self.trainer
        accelerator = trainer.accelerator
        with unwrap_model_for_generation(trainer.model_wrapped, accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
                                         ) as model:
            gather = (lambda rows: [r for part in _gather_objects(rows, accelerator) for r in part]) \
                if accelerator.num_processes > 1 else None
            metrics = evaluate_slice(model, trainer.processing_class, self.valid, accelerator.process_index,
                                     accelerator.num_processes, gather)
        self._row(step).update(metrics)
        self.evaluated.add(step)
        self.log(f"[rta] step {step}: validation " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        self._write()

    # -- Trainer hooks --

    def on_train_begin(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if step > 0 and self.path.is_file():  # resumed: keep the earlier rows up to the checkpoint
            old = pd.read_csv(self.path)
            old = old[old["step"] <= step]
            self.rows = {int(r["step"]): {k: v for k, v in r.items() if pd.notna(v)} for r in old.to_dict("records")}
            self.evaluated = {s for s, r in self.rows.items() if "val_H@10" in r}
            self.offset_s = float(old["wall_s"].max()) if len(old) and old["wall_s"].notna().any() else 0.0
        else:
            self.rows = {}
        self.began = time.perf_counter()
        if step == 0:
            self._evaluate(0)  # the starting policy, "before"
        return control

    def on_step_end(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if step % self.eval_every == 0:
            self._evaluate(step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = int(state.global_step)
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            return control
        row = self._row(step)
        row["epoch"] = logs.get("epoch", state.epoch)
        for key, column in {**TRAIN_COLUMNS, **TOOL_COLUMNS}.items():
            if logs.get(key) is not None:
                row[column] = float(logs[key])
        row["wall_s"] = self.offset_s + time.perf_counter() - self.began
        self._write()
        self.log(progress_line(step, row))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._evaluate(int(state.global_step))  # the final policy, "after"
        self._write()
        return control


def progress_line(step: int, row: dict[str, Any]) -> str:
    """The console line of one logged step: the main curves and the effective batch."""
    shown = {k: row.get(k) for k in ("reward", "valid_share", "tool_calls_mean", "dropped_group_share", "loss")}
    parts = [f"{k} {v:.3g}" for k, v in shown.items() if v is not None]
    if all(row.get(k) is not None for k in ("groups_kept", "groups_total", "effective_batch")):
        parts.append(f"groups kept {row['groups_kept']:g}/{row['groups_total']:g} "
                     f"(effective batch {row['effective_batch']:g} trajectories)")
    return f"[rta] step {step}: " + ", ".join(parts)


def _gather_objects(rows: list, accelerator: Any) -> list[list]:
    from accelerate.utils import gather_object

    return gather_object([rows])


def read_train_log(path: Path | str) -> pd.DataFrame:
    """The training log as a frame (empty with the standard columns when absent)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=LOG_COLUMNS)
    return pd.read_csv(path)


def summarize_log(log: pd.DataFrame, columns: Sequence[str] = ("reward", "valid_share", "tool_calls_mean",
                                                               "dropped_group_share")) -> dict[str, Any]:
    """First and last values of the main curves and validation H@10 before and after."""
    out: dict[str, Any] = {}
    train = log.dropna(subset=["reward"]) if "reward" in log else log.iloc[0:0]
    for column in columns:
        if column in train and len(train):
            out[f"{column}_first"] = float(train[column].iloc[0])
            out[f"{column}_last"] = float(train[column].iloc[-1])
    val = log.dropna(subset=["val_H@10"]) if "val_H@10" in log else log.iloc[0:0]
    if len(val):
        out["val_H@10_before"] = float(val["val_H@10"].iloc[0])
        out["val_H@10_after"] = float(val["val_H@10"].iloc[-1])
        out["val_valid_before"] = float(val["val_valid_share"].iloc[0])
        out["val_valid_after"] = float(val["val_valid_share"].iloc[-1])
    return out
